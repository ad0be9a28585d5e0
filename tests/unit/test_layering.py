"""The layering: the model's own checks live in app/recommender, which never imports app/services;
the pipeline's gate checks a bundle without the serving process's state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _services_loaded_by(modules: str) -> list[str]:
    """The app/services modules that importing ``modules`` (``a, b``) loads, in a fresh interpreter."""
    probe = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.startswith('app.services')))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return ast.literal_eval(result.stdout.strip())


@pytest.mark.parametrize(
    ("package", "entry_points"),
    [
        ("recommender", "app.recommender.bundle"),
        # the registry's export took served_row from app/services/dashboard.py: the flow's export and
        # promote loaded the web dashboard's queries to read a manifest's metrics
        # (app/recommender/manifest_metrics.py now)
        ("registry", "app.registry.export"),
        # the features store and the scheduler took write_durably, sync_directory and exclusive_lock
        # from app/services/durable_files.py: generic file helpers, in app/durable.py now
        ("pipeline", "app.pipeline.features_store, app.pipeline.schedule"),
    ],
)
def test_the_layers_below_the_service_import_nothing_of_app_services(package: str, entry_points: str) -> None:
    """app/recommender, app/registry and app/pipeline sit below app/services (ARCHITECTURE.md):
    no module of theirs imports it, and importing their entry points loads none of it."""
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in (ROOT / "app" / package).rglob("*.py")
        if (names := sorted(n for n in _imported_modules(path) if n.startswith("app.services")))
    }
    assert not offenders
    assert _services_loaded_by(entry_points) == []


def test_the_gate_checks_a_bundles_rating_model_without_loading_the_serving_layer() -> None:
    """``app/pipeline/gate.py`` took ``attach_rating_model`` from ``app/services/models.py``: the
    gate (and the export) loaded the serving layer to check a bundle, though the check uses no
    service state. It is the bundle's own check, in app/recommender/bundle.py, defined once."""
    assert _services_loaded_by("app.pipeline.gate") == []
    definitions = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "app").rglob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "attach_rating_model"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert definitions == ["app/recommender/bundle.py"]


def test_the_model_store_retention_reads_the_workers_records_without_the_serving_layer() -> None:
    """``remove_old_bundles`` (the flow's export step) imported ``app.services.reload`` for the name
    of the workers' records directory: the pipeline loaded the reload machinery of the serving
    process for a constant. The name lives beside the reload marker's, in app/recommender/bundle.py."""
    probe = (
        "import sys, pathlib, app.registry.export as export; "
        "export._bundles_in_use(pathlib.Path('/nonexistent')); "
        "print('app.services.reload' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False", result.stdout
