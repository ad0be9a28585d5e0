"""A flow whose export to the serving model store fails must not leave the registry naming a
champion the model store does not serve.

The gate used to move the ``champion`` alias before ``release`` exported the bundle: when the
export then failed (model store unwritable, disk full), the run was marked FAILED but the
registry said champion = the new version while ``model/latest`` (what the service loads) still
held the old one; the scheduler then skipped every tick (data and code unchanged since the last
*finished* run) and the next gate compared with a champion that was never served.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.pipeline.runner import PipelineError, run_flow
from app.registry.export import served_version
from app.registry.mlflow_registry import Registry
from tests.helpers import flow_settings

pytestmark = pytest.mark.integration

FLOW_TIMEOUT = 600


def test_a_failed_export_leaves_the_champion_alias_on_the_served_bundle(tmp_path: Path) -> None:
    settings = flow_settings(tmp_path)
    store = settings.model_dir
    run_flow(settings, timeout=FLOW_TIMEOUT)
    registry = Registry.from_settings(settings)
    first = registry.champion()
    assert first is not None and served_version(store) == first.bundle_version

    # The next run's candidate passes the gate (any score does), but its export cannot be written.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the model store cannot be created under a file")
    failing = settings.model_copy(update={"model_dir": blocker / "model", "gate_tolerance": 1.0})
    with pytest.raises(PipelineError, match="the training flow failed"):
        run_flow(failing, timeout=FLOW_TIMEOUT)

    champion = registry.champion()
    assert champion is not None
    assert champion.version == first.version, "the alias moved to a version that was never exported"
    assert served_version(store) == champion.bundle_version
    newest = max(registry.versions(), key=lambda v: int(v.version))
    assert newest.version != first.version
    assert newest.decision != "promoted"
    assert any("export" in reason for reason in json.loads(newest.tags["gate_reasons"]))
