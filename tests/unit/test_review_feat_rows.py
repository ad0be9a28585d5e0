"""Raw files pandas cannot tokenize (a row with an extra field, a stray quote, an empty
registry-package file): refused naming the file, not a bare pandas error (a 500 in the API)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.recommender.data import DataFormatError, load_directory
from tests.synthetic import write_grouplens, write_recbole

pytestmark = pytest.mark.unit


def _append(name: str, line: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        path.write_bytes(path.read_bytes() + line.encode("latin-1"))

    return mutate


@pytest.mark.parametrize(
    ("writer", "mutate", "message"),
    [
        (write_grouplens, _append("u.data", "1\t3\t4\t880000000\t9\n"), r"u\.data: .*Expected 4 fields"),
        (write_grouplens, _append("u.user", "500|30|M|doctor|12345|x\n"), r"u\.user: .*Expected 5 fields"),
        (write_grouplens, _append("u.data", '"1\t3\t4\t880000000\n'), r"u\.data: "),
        (write_recbole, _append("ml-100k.inter", "1\t3\t4\t880000000\t9\n"), r"ml-100k\.inter: "),
        (write_recbole, lambda d: (d / "ml-100k.inter").write_bytes(b""), r"ml-100k\.inter: "),
    ],
    ids=["extra-field-u.data", "extra-field-u.user", "stray-quote", "extra-field-inter", "empty-inter"],
)  # fmt: skip
def test_rows_pandas_cannot_tokenize_are_refused_naming_the_file(
    tmp_path: Path, writer: Callable[[Path], Path], mutate: Callable[[Path], None], message: str
) -> None:
    directory = writer(tmp_path / "bad")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


@pytest.mark.api
def test_a_row_with_an_extra_field_is_a_503_from_the_features_api(
    make_app: Any, auth_headers: dict, tmp_path: Path
) -> None:
    """No snapshot loaded: the features are computed from the local files, and a ParserError
    from pandas was not a DataUnavailableError, so the API answered a bare 500."""
    directory = write_grouplens(tmp_path / "bad-data")
    _append("u.data", "1\t3\t4\t880000000\t9\n")(directory)
    client = make_app(data_dir=directory).test_client()
    response = client.get("/api/users/1/features", headers=auth_headers)
    assert response.status_code == 503, response.get_json()
    assert "u.data" in response.get_json()["error"]["message"]
