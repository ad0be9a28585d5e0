"""Versions registered ``pending`` by a pipeline run that ended before the gate decided on them.

The flow registers every candidate ``pending`` and records the gate's decision afterwards; a
flow that died in between (the tracking store failed, the launcher was killed) left them
``pending`` for ever: ``pipeline versions`` read as if a gate were still deciding on them. Once
their pipeline run has ended they are marked ``abandoned``, and ``promote`` still refuses them
without ``--force``; a version whose run is still going is left alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.pipeline import runner
from app.registry.mlflow_registry import ABANDONED, PENDING, Registry
from tests.helpers import flow_settings

pytestmark = pytest.mark.unit


def _pending_version(registry: Registry, metaflow_run: str) -> tuple[str, str]:
    """A pipeline run (still RUNNING) with one candidate registered pending, as a flow's release
    step leaves it before the gate records its decision; (pipeline run id, version)."""
    parent = registry.start_pipeline_run({"data_hash": "d", "metaflow_run_id": metaflow_run})
    run = registry.start_candidate_run(parent, "most_liked", {"metaflow_run_id": metaflow_run})
    registry.client.set_terminated(run, "FINISHED")
    info = registry.register(run, {"bundle_version": "b", "candidate": "most_liked", "pipeline_run": parent})
    assert info.decision == PENDING
    return parent, info.version


def test_pending_versions_of_ended_runs_are_marked_abandoned(tmp_path: Path) -> None:
    registry = Registry.from_settings(flow_settings(tmp_path))
    failed_run, failed = _pending_version(registry, "1")
    killed_run, killed = _pending_version(registry, "2")
    _running_run, running = _pending_version(registry, "3")
    decided_run, decided = _pending_version(registry, "4")
    registry.record_decision(decided, "rejected", ["worse than the champion"])
    registry.client.set_terminated(failed_run, "FAILED")
    registry.client.set_terminated(killed_run, "KILLED")
    registry.client.set_terminated(decided_run, "FINISHED")

    assert sorted(registry.abandon_pending_versions()) == sorted([failed, killed])

    for version, status in ((failed, "FAILED"), (killed, "KILLED")):
        info = registry.get(version)
        assert info.decision == ABANDONED and not info.decided
        assert any(failed_run in r or killed_run in r for r in info.reasons), info.reasons
        assert any(status in reason for reason in info.reasons), info.reasons
    assert registry.get(running).decision == PENDING  # its flow may still record the decision
    assert registry.get(decided).decision == "rejected"
    assert registry.abandon_pending_versions() == []  # once


def test_a_failed_flow_abandons_its_pending_versions_when_its_runs_are_closed(tmp_path: Path) -> None:
    """The launcher closes a failed flow's MLflow runs FAILED (``_mark_failed``): its versions
    that never got a decision say so at once, not only at the next flow."""
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    _run, version = _pending_version(registry, "77")
    run_id_file = tmp_path / "run-id"
    run_id_file.write_text("77\n")

    runner._mark_failed(settings, run_id_file)

    assert registry.get(version).decision == ABANDONED


def test_the_next_flow_abandons_the_pending_versions_of_a_killed_one(tmp_path: Path) -> None:
    """A launcher killed outright never reaches ``_mark_failed``: the next flow of the var root
    closes the run KILLED and abandons its pending versions."""
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    owner = runner.flow_owner(settings)
    parent = registry.start_pipeline_run({"data_hash": "d", "flow_owner": owner})
    run = registry.start_candidate_run(parent, "most_liked", {"flow_owner": owner})
    registry.client.set_terminated(run, "FINISHED")
    version = registry.register(run, {"bundle_version": "b", "pipeline_run": parent}).version

    runner._close_abandoned(settings, owner)

    assert registry.get(version).decision == ABANDONED
