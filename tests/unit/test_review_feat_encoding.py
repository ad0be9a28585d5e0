"""The registry-package files in Latin-1 (GroupLens' own encoding, kept by a conversion of
u.item to ml-100k.item): read as the GroupLens reader reads them, not a UnicodeDecodeError
(a 500 from the features API, a traceback from `movierec features build`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.recommender.data import load_directory
from tests.synthetic import write_recbole

pytestmark = pytest.mark.unit


def test_a_latin1_registry_package_item_file_loads_with_its_titles(tmp_path: Path) -> None:
    expected = load_directory(write_recbole(tmp_path / "plain"))
    latin = write_recbole(tmp_path / "latin")
    utf8 = write_recbole(tmp_path / "utf8")
    for directory, encoding in ((latin, "latin-1"), (utf8, "utf-8")):
        path = directory / "ml-100k.item"
        path.write_bytes(path.read_bytes().replace(b"\tMovie 1\t", "\tLes Misérables\t".encode(encoding), 1))
    for directory in (latin, utf8):
        loaded = load_directory(directory)
        assert "Les Misérables (1981)" in loaded.items["title"].tolist(), directory
        assert loaded.ratings.equals(expected.ratings)
