"""Multiprocess metrics files of stopped processes: folded into one archive, the totals unchanged.

Under uwsgi every worker writes its own files in PROMETHEUS_MULTIPROC_DIR, named by its pid,
and workers are recycled (max-requests, reload-on-rss). Every scrape reads every file: a
directory that kept each recycled worker's files grew without end, and a scrape over 1,000
of them took over a second of a worker's CPU (10,000: past Prometheus's 10 s scrape timeout).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from app.monitoring.metrics import ARCHIVE_ID, retire_process, scrape_lock

pytestmark = pytest.mark.unit

REQUESTS = ("t_requests", "t_requests_total", ("status",))
LATENCY = ("t_latency", "t_latency_bucket", ("le",))


def _write(
    path: Path, typ: str, pid: object, values: dict[tuple[tuple[str, str, tuple[str]], str], float]
) -> None:
    store = MmapedDict(str(path / f"{typ}_{pid}.db"))
    try:
        for ((metric, sample, labelnames), label), value in values.items():
            store.write_value(mmap_key(metric, sample, list(labelnames), [label], "help"), value, 0.0)
    finally:
        store.close()


def _totals(path: Path) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return {
        (sample.name, json.dumps(sample.labels, sort_keys=True)): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.db"))


def test_a_stopped_process_is_folded_into_the_archive_and_the_totals_do_not_move(tmp_path: Path) -> None:
    _write(tmp_path, "counter", 111, {(REQUESTS, "200"): 3, (REQUESTS, "500"): 1})
    _write(tmp_path, "histogram", 111, {(LATENCY, "0.1"): 2, (LATENCY, "+Inf"): 1})
    _write(tmp_path, "counter", 222, {(REQUESTS, "200"): 5})
    _write(tmp_path, "histogram", 222, {(LATENCY, "0.1"): 4})
    before = _totals(tmp_path)
    assert before[("t_requests_total", '{"status": "200"}')] == 8

    assert retire_process(str(tmp_path), 111)
    assert _files(tmp_path) == sorted(
        [f"counter_{ARCHIVE_ID}.db", "counter_222.db", f"histogram_{ARCHIVE_ID}.db", "histogram_222.db"]
    )
    assert _totals(tmp_path) == before

    assert retire_process(str(tmp_path), 222)  # added to what the archive holds
    assert _files(tmp_path) == [f"counter_{ARCHIVE_ID}.db", f"histogram_{ARCHIVE_ID}.db"]
    assert _totals(tmp_path) == before
    assert retire_process(str(tmp_path), 222)  # again (uwsgi's hook, then Python's atexit): nothing moves
    assert _totals(tmp_path) == before


def test_a_scrape_in_progress_is_never_shown_a_half_retired_process(tmp_path: Path) -> None:
    _write(tmp_path, "counter", 111, {(REQUESTS, "200"): 3})
    before = _totals(tmp_path)
    with scrape_lock(str(tmp_path)):  # a scrape reading the files
        assert not retire_process(str(tmp_path), 111, timeout=0.2)  # gives up: the files stay
        assert _files(tmp_path) == ["counter_111.db"]
    assert _totals(tmp_path) == before
    assert retire_process(str(tmp_path), 111, timeout=0.2)
    assert _totals(tmp_path) == before


def test_a_scrape_waits_while_a_process_is_being_retired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import threading

    from app.monitoring import metrics

    _write(tmp_path, "counter", 111, {(REQUESTS, "200"): 3})
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    answers: list[bytes] = []
    with metrics._directory_lock(str(tmp_path), fcntl.LOCK_EX, 0) as locked:  # a retirement under way
        assert locked
        scrape = threading.Thread(target=lambda: answers.append(metrics.render()[0]), daemon=True)
        scrape.start()
        scrape.join(0.3)
        assert scrape.is_alive() and not answers  # the files are not read meanwhile
    scrape.join(5)
    assert b't_requests_total{status="200"} 3.0' in answers[0]


CHILD = """
import glob, os, sys
from app.exit_hooks import close_at_exit
from app.monitoring import metrics


class RequestLog:  # what a worker closes at exit (the request log, the feedback journal)
    def close(self, timeout=0.0):
        own = glob.glob(os.path.join(sys.argv[1], f"counter_{os.getpid()}.db"))
        print("own files at close:", len(own), flush=True)


log = RequestLog()
close_at_exit(log)  # as create_app does, before the first request
metrics.TALLY.count(metrics.FEEDBACK)  # the first request
"""


def test_a_process_is_retired_after_the_rest_of_its_exit_work(tmp_path: Path) -> None:
    """Retiring may wait (up to RETIRE_SECONDS) for a scrape: it must not take its time from the
    request log's and the journal's final flush, which have rows to lose (worker-reload-mercy)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "own files at close: 1" in done.stdout  # closed first, then retired
    assert _files(tmp_path) == [f"counter_{ARCHIVE_ID}.db", f"histogram_{ARCHIVE_ID}.db"]
    assert _totals(tmp_path)[("movierec_feedback_total", "{}")] == 1


LATE_CHILD = """
from app.exit_hooks import run_exit_callbacks
from app.monitoring import metrics

metrics.TALLY.count(metrics.FEEDBACK)
metrics.TALLY.observe(metrics.FEEDBACK_SCORE, 4.0)
run_exit_callbacks()  # uwsgi's exit hook: the counts written, the files archived
metrics.TALLY.count(metrics.FEEDBACK)  # a thread still running counts after that
metrics.TALLY.observe(metrics.FEEDBACK_SCORE, 2.0)
metrics.TALLY.count(metrics.MODEL_CALLS, ("ok",))  # a series new to this process, too
# Python's atexit runs the callbacks again: the tally writes what was queued since
"""


def test_counts_made_after_the_process_was_archived_are_not_lost(tmp_path: Path) -> None:
    """At exit a process's files are added to the archive and removed; prometheus-client keeps
    writing into the removed files (its open maps), so whatever the tally wrote after that (a
    thread that counted after the exit hook, written by Python's atexit or the tally's thread)
    was counted nowhere. Those counts now go straight to the archive."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", LATE_CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(tmp_path) == [f"counter_{ARCHIVE_ID}.db", f"histogram_{ARCHIVE_ID}.db"]
    totals = _totals(tmp_path)
    assert totals[("movierec_feedback_total", "{}")] == 2
    assert totals[("movierec_feedback_score_count", "{}")] == 2
    assert totals[("movierec_feedback_score_sum", "{}")] == 6.0
    assert totals[("movierec_feedback_score_bucket", '{"le": "2.0"}')] == 1
    assert totals[("movierec_model_calls_total", '{"outcome": "ok"}')] == 1
