"""The code version the scheduler compares: ML code changes count, comments and docstrings do not.

Every *.py byte under app/recommender was hashed, so a comment or a reworded docstring was a
"code change": the next tick retrained every candidate and registered (and promoted) a new
version of an identical model. And only app/recommender was hashed: app/pipeline/candidates.py,
which evaluates, fits and batch-infers every candidate and writes its bundle, could change
without a new version, so the scheduler skipped the retraining the change called for. So could
the drift reference every manifest carries (app/monitoring/drift.py), and an upgrade of the
numerical libraries the models are fitted with, which is now hashed by installed version.
"""

from __future__ import annotations

import os
import shutil
import subprocess  # nosec B404
import sys
from importlib import metadata
from pathlib import Path

import pytest

import app
import app.recommender.bundle as bundle_module
from app.recommender.bundle import code_version

pytestmark = pytest.mark.unit

PACKAGE = Path(app.__file__).parent


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the ``app`` package's ML and pipeline code, its monitoring and its web layer."""
    root = tmp_path / "app"
    for part in ("recommender", "pipeline", "monitoring", "api"):
        shutil.copytree(PACKAGE / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """Installed distributions as importlib.metadata reports them: set a name to a version to
    "upgrade" it, to None to "uninstall" it; the others are the real ones."""
    real = metadata.version
    versions: dict[str, str | None] = {}

    def version(name: str) -> str:
        if name not in versions:
            return real(name)
        if versions[name] is None:
            raise metadata.PackageNotFoundError(name)
        return str(versions[name])

    monkeypatch.setattr(metadata, "version", version)
    return versions


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


def test_a_reworded_attribute_docstring_or_a_bare_string_statement_is_not_a_new_code_version(
    tree: Path,
) -> None:
    """The project documents a constant by the string under it (STYLE.md): that string, and any
    other string standing alone as a statement, does nothing when the code runs. Only the first
    statement of a module, class or function was left out, so rewording the note under
    ``FEEDBACK_USER_BASE`` or ``CODE_VERSION_SOURCES`` was a new code version: the next
    scheduler tick retrained every candidate and registered an identical model."""
    before = code_version(tree)
    _edit(tree / "recommender" / "data.py", '"""User ids above it are', '"""Reworded: user ids above it are')
    _edit(
        tree / "recommender" / "bundle.py",
        '"""What :func:`code_version` hashes',
        '"""Reworded: what it hashes',
    )
    _edit(
        tree / "pipeline" / "candidates.py",
        "    timings: dict[str, float] = {}\n",
        '    timings: dict[str, float] = {}\n    "a note"\n',
    )
    assert code_version(tree) == before
    # a string the code uses is code
    _edit(
        tree / "pipeline" / "candidates.py",
        'SELECTION_METRIC = f"ndcg@{K}_mean"',
        'SELECTION_METRIC = f"ndcg@{K}_sd"',
    )
    assert code_version(tree) != before


@pytest.mark.parametrize(
    "edit", ["constant", "new_module", "renamed", "candidate_training", "features", "drift_reference"]
)
def test_a_change_to_the_ml_code_is_a_new_code_version(tree: Path, edit: str) -> None:
    before = code_version(tree)
    if edit == "features":  # the encoding the linear models (and the rating model) are fitted on
        _edit(tree / "recommender" / "features.py", "def ", "X = 1\n\n\ndef ")
    elif edit == "drift_reference":  # writes every manifest's training_distribution
        _edit(tree / "monitoring" / "drift.py", "float(value) / total", "float(value) / total / 2")
    elif edit == "constant":
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
    version holds: retraining every candidate for it would only repeat the last run. Nor does
    the web layer that serves a bundle."""
    before = code_version(tree)
    future = "from __future__ import annotations"
    for module in ("pipeline/gate.py", "pipeline/schedule.py", "pipeline/flow.py", "api/recommend.py"):
        _edit(tree / module, future, f"{future}\nX = 1")
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


@pytest.mark.parametrize("library", ["numpy", "scipy", "pandas", "scikit-learn", "lightgbm"])
def test_an_upgrade_of_a_numerical_library_is_a_new_code_version(
    tree: Path, installed: dict[str, str | None], library: str
) -> None:
    """The models are fitted by these libraries: an upgrade can change what a version holds
    (another solver default, another float summation order), so the scheduler retrains. It
    used to skip: only the source files were hashed."""
    before = code_version(tree)
    installed[library] = "999.0"
    assert code_version(tree) != before


@pytest.mark.parametrize("library", ["flask", "werkzeug", "mlflow", "metaflow", "sqlalchemy"])
def test_an_upgrade_of_the_web_or_orchestration_libraries_is_not_a_new_code_version(
    tree: Path, installed: dict[str, str | None], library: str
) -> None:
    before = code_version(tree)
    installed[library] = "999.0"
    assert code_version(tree) == before


def test_a_numerical_library_not_installed_is_a_code_version_of_its_own(
    tree: Path, installed: dict[str, str | None]
) -> None:
    """``movierec train`` runs without the pipeline extra (no LightGBM): the code version is
    still computed, and installing the library later is a change."""
    installed["lightgbm"] = None
    without = code_version(tree)
    installed["lightgbm"] = "4.7.0"
    assert code_version(tree) != without


def test_after_an_upgrade_the_scheduler_and_the_flow_it_starts_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler is a long-lived process that compares its code version with the one the
    flow (a new ``sys.executable -m app.pipeline.flow`` process) recorded: one that differed
    between the two would retrain at every tick. After an in-place NumPy upgrade (here, a newer
    distribution first on the path) the scheduler still has the old NumPy loaded; a version read
    from it (``numpy.__version__``) would never match the flow's."""
    import numpy

    before = code_version()
    upgraded = tmp_path / "site-packages"
    dist_info = upgraded / "numpy-999.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 999.0\n")
    monkeypatch.syspath_prepend(str(upgraded))
    assert numpy.__version__ != "999.0"  # what the scheduler has loaded
    scheduler = code_version()
    assert scheduler != before

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(upgraded), str(PACKAGE.parent)])}
    script = "from app.recommender.bundle import code_version; print(code_version())"
    command = [sys.executable, "-c", script]  # a fixed argument list, no shell
    flow = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60)  # nosec B603
    assert flow.stdout.strip() == scheduler
