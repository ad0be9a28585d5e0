"""The gate's choice is recorded ``promoted`` only once it is the champion.

The release step's gate recorded the version it chose as ``promoted`` before the export put its
bundle into the model store and moved the ``champion`` alias. An export that raised corrected it
to ``passed``, but one interrupted (Ctrl-C reaches the flow's process too: a KeyboardInterrupt,
which ``except Exception`` does not catch) or killed (the launcher's timeout or stop, the OOM
killer while the bundle is loaded for validation) left a version marked ``promoted`` that never
was champion: ``movierec pipeline versions`` listed it so, and the registry's retention took it
for the previous champion. The gate now records it ``passed``, and ``promoted`` once the alias
has moved, as ``movierec promote`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.registry import export
from app.registry.export import served_version
from app.registry.mlflow_registry import Registry
from tests.helpers import flow_settings, register_bundle
from tests.release_step import ReleaseStep

pytestmark = pytest.mark.unit


class _Release(ReleaseStep):
    """The state the flow's release step has when it gates and exports, with its own methods."""

    def __init__(self, version: str, data: Any) -> None:
        self.registered = [
            {"version": version, "candidate": "most_liked", "ndcg_a": 0.3, "ndcg_b": 0.1,
             "ndcg_a_by_seed": {0: 0.3}}
        ]  # fmt: skip
        self.configured_names = ["most_liked"]
        self.seed_list = [0]
        self.code_version = "c0de"
        self.data = data
        self.summary_path = ""  # no launcher to hand a summary to
        self.pipeline_run_id, self.data_hash, self.started = "run", "d", 0.0
        self.ingest_stats, self.snapshot_id, self.db_user_features = {}, "s", 0


class _Interrupted(BaseException):
    """The release interrupted or killed there: no ``except Exception`` of it runs."""


def _gated(tmp_path: Path, model_store: Path, synthetic_data: Any) -> tuple[Any, Registry, Any, _Release]:
    """A registry with one bundle registered and a release whose gate chose it (the first champion)."""
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    chosen = register_bundle(registry, model_store)
    release = _Release(chosen.version, synthetic_data)
    release._gate(registry, settings)
    return settings, registry, chosen, release


def test_a_release_interrupted_in_its_export_leaves_the_chosen_version_passed(
    tmp_path: Path, model_store: Path, synthetic_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, registry, chosen, release = _gated(tmp_path, model_store, synthetic_data)
    assert release.promoted == chosen.version  # the gate chose it: the first champion

    def interrupted(*_args: Any, **_kwargs: Any) -> None:
        raise _Interrupted("Ctrl-C while the bundle is copied into the model store")

    monkeypatch.setattr(export, "point_latest", interrupted)
    with pytest.raises(_Interrupted):
        release._export(registry, settings)

    assert registry.champion() is None and served_version(settings.model_dir) is None
    recorded = registry.get(chosen.version)
    assert recorded.decision == "passed", "marked promoted, but it never was champion"
    assert "best passing candidate of the run" in recorded.reasons


def test_the_chosen_version_is_recorded_promoted_once_the_alias_moved(
    tmp_path: Path, model_store: Path, synthetic_data: Any
) -> None:
    settings, registry, chosen, release = _gated(tmp_path, model_store, synthetic_data)
    release._export(registry, settings)

    champion = registry.champion()
    assert champion is not None and champion.version == chosen.version
    assert champion.decision == "promoted"
    assert champion.reasons[-1] == "best passing candidate of the run"
    assert served_version(settings.model_dir) == champion.bundle_version
    assert release._summary()["candidates"][0]["decision"] == "promoted"
