"""The metrics tally (app/monitoring/metrics.py): queued event-series updates, written in sums."""

from __future__ import annotations

import math
import os
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from app.monitoring.metrics import Tally
from tests.helpers import in_forked_child

pytestmark = pytest.mark.unit

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _series(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Counter, Histogram, Histogram]:
    return (
        Counter("t_plain", "plain counter", registry=registry),
        Counter("t_labelled", "labelled counter", ["kind", "status"], registry=registry),
        Histogram("t_latency", "plain histogram", buckets=BUCKETS, registry=registry),
        Histogram("t_labelled_latency", "labelled histogram", ["kind"], buckets=BUCKETS, registry=registry),
    )


def test_nothing_is_written_before_a_flush_and_everything_after() -> None:
    registry = CollectorRegistry()
    plain, labelled, _, _ = _metrics(registry)
    tally = Tally(interval=3600)  # the thread will not write during this test
    tally.count(plain)
    tally.count(plain, amount=2.5)
    tally.count(labelled, ("a", "200"))
    tally.count(labelled, ("a", "200"), 4)
    tally.count(labelled, ("b", "500"))
    assert _series(registry).get(("t_plain_total", ())) == 0.0
    tally.flush()
    series = _series(registry)
    assert series[("t_plain_total", ())] == 3.5
    assert series[("t_labelled_total", (("kind", "a"), ("status", "200")))] == 5
    assert series[("t_labelled_total", (("kind", "b"), ("status", "500")))] == 1
    tally.flush()  # the queue was emptied: a second flush adds nothing
    assert _series(registry)[("t_plain_total", ())] == 3.5


@pytest.mark.parametrize("labels", [(), ("x",)])
def test_histogram_written_in_sums_equals_one_observe_per_value(labels: tuple[str, ...]) -> None:
    # values on, between, below and above the bounds, and NaN
    values = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.99, 1.0, 1.5, 250.0, math.nan, 0.02]
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    _, _, direct_plain, direct_labelled = _metrics(direct_registry)
    _, _, tallied_plain, tallied_labelled = _metrics(tallied_registry)
    direct = direct_labelled.labels(*labels) if labels else direct_plain
    tallied = tallied_labelled if labels else tallied_plain
    tally = Tally(interval=3600)
    for value in values:
        direct.observe(value)
        tally.observe(tallied, value, labels)
    tally.flush()
    expected, got = _series(direct_registry), _series(tallied_registry)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value), key
    finite = [v for v in values if not math.isnan(v)]
    suffix = (("kind", "x"),) if labels else ()
    name = "t_labelled_latency" if labels else "t_latency"
    assert got[(f"{name}_bucket", (*suffix, ("le", "+Inf")))] == len(finite)


def test_the_thread_writes_the_queue_within_its_interval() -> None:
    registry = CollectorRegistry()
    plain, _, _, _ = _metrics(registry)
    tally = Tally(interval=0.05)
    for _ in range(10):
        tally.count(plain)
    deadline = time.monotonic() + 60
    while _series(registry)[("t_plain_total", ())] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _series(registry)[("t_plain_total", ())] == 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_leaves_the_parents_queue_to_the_parent() -> None:
    registry = CollectorRegistry()
    plain, _, _, _ = _metrics(registry)
    tally = Tally(interval=3600)
    tally.count(plain, amount=7)  # queued in the parent, not yet written

    def child() -> bool:
        ok = len(tally._queue) == 0 and tally._started_in is None
        tally.count(plain)  # the child starts a thread of its own
        return ok and tally._started_in == os.getpid()

    assert in_forked_child(child) == 0
    tally.flush()
    assert _series(registry)[("t_plain_total", ())] == 7
