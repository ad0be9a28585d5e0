"""The code version the scheduler compares: ML code changes count, comments and docstrings do not.

Every *.py byte under app/recommender was hashed, so a comment or a reworded docstring was a
"code change": the next tick retrained every candidate and registered (and promoted) a new
version of an identical model. And only app/recommender was hashed: app/pipeline/candidates.py,
which evaluates, fits and batch-infers every candidate and writes its bundle, could change
without a new version, so the scheduler skipped the retraining the change called for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import app
import app.recommender.bundle as bundle_module
from app.recommender.bundle import code_version

pytestmark = pytest.mark.unit

PACKAGE = Path(app.__file__).parent


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the ``app`` package's ML and pipeline code."""
    root = tmp_path / "app"
    for part in ("recommender", "pipeline"):
        shutil.copytree(PACKAGE / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_comments_docstrings_and_layout_do_not_change_the_code_version(tree: Path) -> None:
    before = code_version(tree)
    ranking = tree / "recommender" / "ranking.py"
    source = ranking.read_text()
    ranking.write_text('"""Reworded module docstring."""\n# a new comment\n\n\n' + source.split('"""', 2)[2])
    metrics = tree / "recommender" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\n# trailing comment\n")
    candidates = tree / "pipeline" / "candidates.py"
    candidates.write_text(candidates.read_text() + "\n\n# trailing comment\n")
    assert code_version(tree) == before


@pytest.mark.parametrize("edit", ["constant", "new_module", "renamed", "candidate_training"])
def test_a_change_to_the_ml_code_is_a_new_code_version(tree: Path, edit: str) -> None:
    before = code_version(tree)
    if edit == "constant":
        _edit(tree / "recommender" / "seeds.py", "0", "7")
    elif edit == "new_module":
        (tree / "recommender" / "models" / "extra.py").write_text("WEIGHT = 1\n")
    elif edit == "renamed":
        (tree / "recommender" / "ranking.py").rename(tree / "recommender" / "ranking2.py")
    else:  # the rating model every bundle carries, fitted with other hyper-parameters
        _edit(tree / "pipeline" / "candidates.py", "LinearRatingModel()", "LinearRatingModel(alpha=3.0)")
    assert code_version(tree) != before


def test_the_scheduler_s_code_version_covers_the_candidate_training_code(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``code_version()`` as the flow and the scheduler call it, over the copy."""
    monkeypatch.setattr(bundle_module, "__file__", str(tree / "recommender" / "bundle.py"))
    before = code_version()
    _edit(tree / "pipeline" / "candidates.py", "build_tables(model, data.ratings)", "build_tables(model)")
    assert code_version() != before


def test_orchestration_outside_the_model_is_not_a_new_code_version(tree: Path) -> None:
    """Which version the gate promotes, or how the flow is laid out, does not change what a
    version holds: retraining every candidate for it would only repeat the last run."""
    before = code_version(tree)
    future = "from __future__ import annotations"
    for module in ("gate.py", "schedule.py", "flow.py"):
        _edit(tree / "pipeline" / module, future, f"{future}\nX = 1")
    assert code_version(tree) == before


def test_the_code_version_does_not_depend_on_the_python_version(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fingerprint was ``ast.dump``, whose text changes with the interpreter for the same code:
    Python 3.12 gave every function and class a ``type_params=[]`` field, 3.13 leaves empty fields
    out. pyproject allows >= 3.11, so a scheduler on another Python than the pipeline image saw
    a "code change" each tick (a retrain of every candidate) and never re-evaluated the
    champion's recipe. Emulated here: 3.12's extra field, empty, on every function and class."""
    import ast

    before = code_version(tree)
    real_parse = ast.parse

    def parse_like_3_12(*args: object, **kwargs: object) -> ast.AST:
        module = real_parse(*args, **kwargs)  # type: ignore[arg-type]
        for node in ast.walk(module):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                node.type_params = []  # type: ignore[attr-defined]
        return module

    for kind in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
        monkeypatch.setattr(kind, "_fields", (*kind._fields, "type_params"))
    monkeypatch.setattr(ast, "parse", parse_like_3_12)
    assert code_version(tree) == before
    _edit(tree / "recommender" / "seeds.py", "0", "7")  # a real change still is one
    assert code_version(tree) != before
