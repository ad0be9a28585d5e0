"""The code version the scheduler compares: ML code changes count, comments and docstrings do not.

Every *.py byte under app/recommender was hashed, so a comment or a reworded docstring was a
"code change": the next tick retrained every candidate and registered (and promoted) a new
version of an identical model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app.recommender
from app.recommender.bundle import code_version

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "recommender"
    shutil.copytree(Path(app.recommender.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_comments_docstrings_and_layout_do_not_change_the_code_version(tree: Path) -> None:
    before = code_version(tree)
    ranking = tree / "ranking.py"
    source = ranking.read_text()
    ranking.write_text('"""Reworded module docstring."""\n# a new comment\n\n\n' + source.split('"""', 2)[2])
    (tree / "metrics.py").write_text((tree / "metrics.py").read_text() + "\n\n# trailing comment\n")
    assert code_version(tree) == before


@pytest.mark.parametrize("edit", ["constant", "new_module", "renamed"])
def test_a_change_to_the_ml_code_is_a_new_code_version(tree: Path, edit: str) -> None:
    before = code_version(tree)
    if edit == "constant":
        seeds = tree / "seeds.py"
        text = seeds.read_text()
        changed = text.replace("0", "7", 1)
        assert changed != text
        seeds.write_text(changed)
    elif edit == "new_module":
        (tree / "models" / "extra.py").write_text("WEIGHT = 1\n")
    else:
        (tree / "ranking.py").rename(tree / "ranking2.py")
    assert code_version(tree) != before
