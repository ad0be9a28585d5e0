"""A raw file with no rows (a truncated copy, an interrupted download) is refused naming the
file: an empty ratings file loaded as a data set without ratings, and the features then died
on the empty frames' dtypes (a bare 500 from the features API, a traceback from the CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.recommender.data import DataFormatError, load_directory
from tests.synthetic import write_grouplens, write_recbole

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["u.data", "u.user", "u.item"])
def test_an_empty_grouplens_file_is_refused(tmp_path: Path, name: str) -> None:
    directory = write_grouplens(tmp_path / "data")
    (directory / name).write_bytes(b"")
    with pytest.raises(DataFormatError, match=rf"{name}"):
        load_directory(directory)


def test_a_header_only_ratings_file_is_refused(tmp_path: Path) -> None:
    directory = write_recbole(tmp_path / "data")
    (directory / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    with pytest.raises(DataFormatError, match=r"ml-100k\.inter: no rows"):
        load_directory(directory)


@pytest.mark.api
def test_an_empty_ratings_file_is_a_503_from_the_features_api(
    make_app: Any, auth_headers: dict, tmp_path: Path
) -> None:
    """No snapshot loaded: the features were computed from zero ratings and the computation
    died on the empty frames' dtypes (UFuncTypeError), a bare 500."""
    directory = write_grouplens(tmp_path / "data")
    (directory / "u.data").write_bytes(b"")
    client = make_app(data_dir=directory).test_client()
    response = client.get("/api/users/1/features", headers=auth_headers)
    assert response.status_code == 503, response.get_json()
    assert "u.data" in response.get_json()["error"]["message"]
