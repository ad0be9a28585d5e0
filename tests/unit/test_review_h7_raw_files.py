"""Raw ml-100k files a data engineer re-exported: extra fields per line, a pair rated twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.recommender.data import DataFormatError, load_directory
from tests.synthetic import write_grouplens

pytestmark = pytest.mark.unit


def _every_line(name: str, suffix: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / name
        lines = path.read_bytes().decode("latin-1").splitlines()
        path.write_bytes("".join(f"{line}{suffix}\n" for line in lines).encode("latin-1"))

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [_every_line("u.data", "\t"), _every_line("u.user", "|"), _every_line("u.item", "|")],
    ids=["u.data", "u.user", "u.item"],
)
def test_a_trailing_separator_on_every_line_loads_the_same_tables(
    tmp_path: Path, mutate: Callable[[Path], None]
) -> None:
    """A spreadsheet or ``awk`` export often ends each line with the separator. pandas then took
    the first column as the index and shifted every field: u.user was refused as "user_id must
    be unique" showing ages, u.data as "rating must be 0.5..5.0" showing timestamps."""
    expected = load_directory(write_grouplens(tmp_path / "plain"))
    directory = write_grouplens(tmp_path / "trailing")
    mutate(directory)
    assert load_directory(directory).fingerprint() == expected.fingerprint()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_every_line("u.data", "\tweb"), r"u\.data: 5 fields .*expected 4 \(user_id, movie_id, rating, timestamp\)"),
        (_every_line("u.user", "|x"), r"u\.user: 6 fields .*expected 5"),
    ],
    ids=["u.data", "u.user"],
)  # fmt: skip
def test_an_extra_column_is_refused_as_one(tmp_path: Path, mutate: Callable[[Path], None], message: str) -> None:
    """An extra column is named as such, not reported as bad values of a shifted field."""
    directory = write_grouplens(tmp_path / "extra")
    mutate(directory)
    with pytest.raises(DataFormatError, match=message):
        load_directory(directory)


def test_a_user_movie_pair_rated_twice_is_refused(tmp_path: Path) -> None:
    """Two ratings of one movie by one user were averaged into a rating nobody gave (1 and 5 → 3)."""
    directory = write_grouplens(tmp_path / "twice")
    path = directory / "u.data"
    user, movie, _rating, stamp = path.read_text().splitlines()[0].split("\t")
    path.write_text(path.read_text() + f"{user}\t{movie}\t1\t{int(stamp) + 1}\n")
    with pytest.raises(DataFormatError, match=r"u\.data: \(user_id, movie_id\) must be unique"):
        load_directory(directory)
