"""The scheduler's "last finished pipeline run" does not follow a clock that was stepped back.

The scheduler skips a tick when the data and code are those of the last finished pipeline run.
That run was the one with the newest start time, which MLflow takes from the launcher's wall
clock: a run made while the clock was ahead (a host booted with a wrong clock, then set right by
NTP) stayed "the last" until the clock caught up with it, so once the data had changed every
tick compared it with that run's data hash and trained again, every day. The last run is now the
one that registered the newest version, a number the tracking store counts up.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.pipeline.schedule import should_run
from app.registry.mlflow_registry import CHAMPION, Registry
from tests.helpers import flow_settings

pytestmark = pytest.mark.unit

YEAR_MS = 365 * 86400 * 1000


def _finished_run(registry: Registry, data_hash: str, start_time: int) -> tuple[str, str]:
    """A pipeline run started at ``start_time`` (ms) that registered a version and finished, as
    the flow's does; its run id and the version."""
    tags = {"kind": "pipeline", "data_hash": data_hash, "code_version": "c0de", "candidates": "most_liked"}
    run = registry.client.create_run(registry.experiment_id, start_time=start_time, tags=tags)
    candidate = registry.start_candidate_run(run.info.run_id, "most_liked", {})
    version = registry.register(candidate, {"pipeline_run": run.info.run_id, "candidate": "most_liked"})
    registry.finish_pipeline_run(run.info.run_id)
    return run.info.run_id, version.version


def test_the_last_pipeline_run_is_the_newest_registered_whatever_the_clock_said(tmp_path: Path) -> None:
    registry = Registry.from_settings(flow_settings(tmp_path))
    now = int(time.time() * 1000)
    _finished_run(registry, "old-data", now + YEAR_MS)  # the clock a year ahead
    corrected, version = _finished_run(registry, "new-data", now)  # set right since
    registry.set_alias(CHAMPION, version)

    last = registry.last_pipeline_run()
    assert last is not None and last["run_id"] == corrected
    decision = should_run(registry, "new-data", "c0de")
    assert not decision.run, decision.reason  # nothing new since: it trained every tick


def test_a_failed_run_that_registered_last_is_not_the_last_finished_one(tmp_path: Path) -> None:
    registry = Registry.from_settings(flow_settings(tmp_path))
    now = int(time.time() * 1000)
    finished, _ = _finished_run(registry, "d1", now - 60_000)
    failed = registry.client.create_run(registry.experiment_id, tags={"kind": "pipeline", "data_hash": "d2"})
    candidate = registry.start_candidate_run(failed.info.run_id, "most_liked", {})
    registry.register(candidate, {"pipeline_run": failed.info.run_id, "candidate": "most_liked"})
    registry.finish_pipeline_run(failed.info.run_id, failed=True)

    last = registry.last_pipeline_run()
    assert last is not None and last["run_id"] == finished
