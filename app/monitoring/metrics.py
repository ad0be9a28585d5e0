"""Prometheus metrics: defined once here, at import, and exposed at ``/metrics``.

Two kinds of series:

* **Event series** (counters and histograms) are counted where the event happens: every
  HTTP request (app/monitoring/http.py), every recommendation list served and every score
  stored (app/monitoring/online.py), every breaker transition, through :data:`TALLY`, which
  writes them to prometheus-client at most a second later (see :class:`Tally`). Under uwsgi each worker is a
  process, so prometheus-client's *multiprocess mode* is used when
  ``PROMETHEUS_MULTIPROC_DIR`` is set (scripts/start-uwsgi.sh sets and empties it before
  any worker exists): each process writes its own mmap file and a scrape, answered by any
  worker, aggregates all of them with a fresh ``CollectorRegistry`` + ``MultiProcessCollector``.
  A process that stops gracefully folds its files into one archive per type
  (:func:`retire_process`), so recycled workers do not pile up files every scrape reads.
  The variable must be set before ``prometheus_client`` is first imported, and the metrics
  must be created once per process (module level, not in ``create_app``: a second app in
  the tests would raise "Duplicated timeseries").
* **State series** (model version info, breaker state, drift, online quality) are read at
  scrape time from the answering worker's loaded bundle and the shared breaker record,
  which every worker sees alike. Multiprocess gauges would need a per-worker file cleaned
  up when uwsgi recycles a worker; reading shared state needs nothing of the kind.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from app.durable import file_lock
from app.exit_hooks import at_exit, reset_after_fork

log = logging.getLogger(__name__)

# A request takes about a millisecond in the app and a champion lookup a few to tens of
# microseconds (docs/performance.md): with 1 ms as the first bound, three requests in four and
# every model call fell in the first bucket, and histogram_quantile could only answer "somewhere
# under 1 ms"; with 10 µs, most model calls on a machine fast for Python (2026-12-06) did.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
# 0.25 s is also the breaker's default latency bound (MOVIEREC_BREAKER_MAX_LATENCY_MS). Both keep
# every bound they had (queries select buckets by ``le``): the finer ones were added below them.
MODEL_LATENCY_BUCKETS = (
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
SCORE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "movierec_http_requests",
    "HTTP requests answered, by endpoint (URL rule), method and status code",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "movierec_http_request_duration_seconds",
    "Time from the first request hook to the response, by endpoint, method and status code",
    ["endpoint", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
RECOMMENDATIONS = Counter(
    "movierec_recommendations",
    "Recommendation lists served (API, each batch item, web UI, users endpoint),"
    " by strategy (segment, personal, fallback)",
    ["strategy"],
)
RECOMMENDED_ITEMS = Counter(
    "movierec_recommended_items",
    "Movies recommended (API, each batch item, web UI, users endpoint), by strategy",
    ["strategy"],
)
FEEDBACK = Counter("movierec_feedback", "Scores stored (/api/recommend/score and the web UI)")
FEEDBACK_SCORE = Histogram(
    "movierec_feedback_score", "Distribution of the scores users gave (0.5 to 5)", buckets=SCORE_BUCKETS
)
MODEL_CALLS = Counter(
    "movierec_model_calls",
    "Calls of the champion model on /api/recommend, by outcome (ok, error)",
    ["outcome"],
)
MODEL_LATENCY = Histogram(
    "movierec_model_latency_seconds",
    "Time the champion model took to answer one /api/recommend (successful calls)",
    buckets=MODEL_LATENCY_BUCKETS,
)
BREAKER_TRANSITIONS = Counter(
    "movierec_breaker_transitions",
    "Circuit breaker state changes decided by this service",
    ["from_state", "to_state"],
)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on (the variable set and the dir present)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


def endpoint_label(rule: str | None) -> str:
    """A bounded label: the URL rule (``/api/users/<int:user_id>/features``), never the raw path."""
    return rule if rule else "<unmatched>"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class Tally:
    """Event-series updates, queued in memory and written to prometheus-client in sums.

    Under uwsgi (multiprocess mode) every prometheus-client update takes a process-wide lock
    and writes the worker's mmap'ed file, ~1–2.5 µs each: a ``/api/recommend`` made seven
    (docs/performance.md, "Tenth machine"). Here an update is one ``deque.append`` (atomic
    under the GIL). A daemon thread, started by the first update in each process, writes the
    queue every ``interval`` seconds: one write per series however many events it holds (a
    histogram's observations are sorted into its buckets first).

    A scrape writes its own process's queue before reading the files (:func:`render`), and the
    queue is written when the process stops (app/exit_hooks.py): the worker answering a scrape
    is exact, the others at most ``interval`` behind, and a worker killed hard loses at most
    its last ``interval`` of counts, never a count already written.

    Once the process's files went to the archive at exit (:meth:`retire`), what is written after
    that (a thread that counted after the exit hook, written by the second run of the exit
    callbacks or by the tally's thread) is added to the archive itself: prometheus-client still
    wrote it into the removed files, and it was counted nowhere.
    """

    def __init__(self, interval: float = 1.0, *, retire_at_exit: bool = False) -> None:
        self.interval = interval
        # the process's own TALLY: at exit, after everything else, its files go to the archive
        self.retire_at_exit = retire_at_exit
        self._queue: deque[tuple[Any, tuple[str, ...], float, bool]] = deque()
        self._write_lock = threading.Lock()  # a scrape's flush waits for one in progress
        self._start_lock = threading.Lock()
        self._started_in: int | None = None  # the pid whose thread writes the queue
        self._archived = False  # this process's files are in the archive: later writes go there

    def count(self, counter: Any, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        """Add ``amount`` to ``counter`` (label values in declaration order)."""
        self._queue.append((counter, labels, amount, False))
        if self._started_in is None:
            self._start()

    def observe(self, histogram: Any, value: float, labels: tuple[str, ...] = ()) -> None:
        """Observe ``value`` in ``histogram`` (label values in declaration order)."""
        self._queue.append((histogram, labels, value, True))
        if self._started_in is None:
            self._start()

    def flush(self) -> None:
        """Write everything queued so far (each series once)."""
        with self._write_lock:
            self._write_queued()

    def retire(self, path: str) -> None:
        """At exit: write the queue, then add this process's files to the archive in ``path``."""
        with self._write_lock:  # no write lands in the files while they are archived
            self._write_queued()
            if self._archived:
                return
            try:
                self._archived = retire_process(path, os.getpid())
            except Exception:
                log.exception("metrics: this process's files could not be archived (they are still counted)")

    def _write_queued(self) -> None:
        """(The write lock held.)"""
        counts: dict[tuple[Any, tuple[str, ...]], float] = {}
        observations: dict[tuple[Any, tuple[str, ...]], list[float]] = {}
        queue = self._queue
        while True:
            try:
                metric, labels, value, observed = queue.popleft()
            except IndexError:
                break
            key = (metric, labels)
            if observed:
                observations.setdefault(key, []).append(value)
            else:
                counts[key] = counts.get(key, 0.0) + value
        if self._archived:
            _archive_late(counts, observations)
            return
        for (metric, labels), total in counts.items():
            (metric.labels(*labels) if labels else metric).inc(total)
        for (metric, labels), values in observations.items():
            _observe_all(metric.labels(*labels) if labels else metric, values)

    def _start(self) -> None:
        with self._start_lock:
            if self._started_in == os.getpid():
                return
            self._started_in = os.getpid()
            threading.Thread(target=self._run, name="movierec-metrics", daemon=True).start()
            at_exit(self.flush)
            if self.retire_at_exit:
                # registered at the first count, after what create_app registers (the request
                # log's and the journal's final flush), so that retiring, which may wait for a
                # scrape, never takes their time
                at_exit(_retire_this_process)
            reset_after_fork(self._forked)

    def _forked(self) -> None:
        """In a forked child: the parent's thread is gone and its queue is the parent's to write."""
        self._queue = deque()
        self._started_in = None
        self._archived = False
        self._write_lock = threading.Lock()
        self._start_lock = threading.Lock()

    def _run(self) -> None:
        pid = os.getpid()
        while self._started_in == pid:
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception:
                log.exception("metrics: queued updates could not be written")


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each value, in one write per bucket touched and one for the sum.

    prometheus-client has no public call for this; it uses the child's ``_upper_bounds``,
    ``_buckets`` and ``_sum`` (as in prometheus-client 0.20–0.26; tests/unit/test_metrics_tally.py
    compares the result with plain ``observe`` calls, so a change there fails the tests).
    """
    histogram._sum.inc(sum(values))
    for bucket, n in zip(histogram._buckets, _per_bucket(histogram, values), strict=True):
        if n:
            bucket.inc(n)


def _per_bucket(histogram: Any, values: list[float]) -> list[int]:
    """How many of ``values`` fall in each of the histogram child's buckets."""
    bounds = histogram._upper_bounds
    per_bucket = [0] * len(bounds)
    for value in values:
        if value == value:  # NaN falls in no bucket, as with observe()
            per_bucket[bisect.bisect_left(bounds, value)] += 1
    return per_bucket


TALLY = Tally(retire_at_exit=True)


def observe_request(rule: str | None, method: str, status: int, seconds: float | None) -> None:
    labels = (endpoint_label(rule), method_label(method), str(status))
    TALLY.count(HTTP_REQUESTS, labels)
    if seconds is not None:
        TALLY.observe(HTTP_LATENCY, seconds, labels)


class _ProcessRegistry:
    """Forwards this process's default registry (plain, single-process mode) into a scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(state_collectors: Iterable[Any] = ()) -> tuple[bytes, str]:
    """The exposition text for one scrape, and its content type.

    Multiprocess mode: a fresh registry aggregating every process's files (a scrape sees
    all workers, including ones recycled since the start). Otherwise: this process's
    registry. ``state_collectors`` add the state series.
    """
    TALLY.flush()  # this process's queued events, so what it answers is exact for itself
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessRegistry())
    for collector in state_collectors:
        registry.register(collector)
    if path is None:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    with scrape_lock(path):  # the files are read here: no process is retired meanwhile
        return generate_latest(registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- stopped processes

ARCHIVE_ID = "archive"
"""Stands for the pid in the names of the files that hold the counts of every retired process."""
ARCHIVED_TYPES = ("counter", "histogram", "summary")  # summed across files by a scrape (gauges are not)
LOCK_FILE = ".lock"  # not *.db: a scrape reads only those
RETIRE_SECONDS = 1.0  # a scrape holds the lock for milliseconds


def _directory_lock(path: str, operation: int, timeout: float | None) -> AbstractContextManager[bool]:
    """``flock`` on the directory's lock file; yields whether it was taken within ``timeout``."""
    return file_lock(Path(path) / LOCK_FILE, shared=operation == fcntl.LOCK_SH, timeout=timeout, mode=0o600)


@contextlib.contextmanager
def scrape_lock(path: str) -> Iterator[None]:
    """Held (shared) while a scrape reads the files: a process is never retired halfway under it."""
    with _directory_lock(path, fcntl.LOCK_SH, None):
        yield


def retire_process(path: str, pid: int, timeout: float = RETIRE_SECONDS) -> bool:
    """Add a stopped process's counter and histogram files to the archive files, then remove them.

    Under uwsgi workers are recycled (max-requests, reload-on-rss) and each new one writes files
    named by its own pid. Every scrape reads every file in the directory, so kept for ever they
    made each scrape slower (1,000 files: over a second of the answering worker's CPU) and filled
    the directory. A scrape sums these types across files, so one archive per type holding the
    sums of every retired process gives the same totals. The archive is rewritten whole and
    replaced, under an exclusive lock no scrape holds, then the process's files are removed:
    a scrape never sees a process both in the archive and in its own file, or in neither. False
    (the files stay, counted as before) when scrapes kept the lock for ``timeout`` seconds.
    """
    own = {typ: os.path.join(path, f"{typ}_{pid}.db") for typ in ARCHIVED_TYPES}
    own = {typ: name for typ, name in own.items() if os.path.exists(name)}
    if not own:
        return True
    with _directory_lock(path, fcntl.LOCK_EX, timeout) as locked:
        if not locked:
            return False
        for typ, name in own.items():
            sums: dict[str, float] = {}
            for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(name):
                sums[key] = sums.get(key, 0.0) + value
            _add_to_archive(path, typ, sums)
            os.remove(name)
    return True


def _add_to_archive(path: str, typ: str, sums: dict[str, float]) -> None:
    """(The exclusive lock held.) Rewrite ``typ``'s archive with ``sums`` added, replaced whole."""
    archive = os.path.join(path, f"{typ}_{ARCHIVE_ID}.db")
    if os.path.exists(archive):
        for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(archive):
            sums[key] = sums.get(key, 0.0) + value
    staging = os.path.join(path, f".{typ}_{ARCHIVE_ID}.staging")  # not *.db: never scraped
    with contextlib.suppress(FileNotFoundError):
        os.remove(staging)
    merged = MmapedDict(staging)
    try:
        for key, value in sums.items():
            merged.write_value(key, value, 0.0)
    finally:
        merged.close()
    os.replace(staging, archive)


def _archive_late(
    counts: dict[tuple[Any, tuple[str, ...]], float],
    observations: dict[tuple[Any, tuple[str, ...]], list[float]],
) -> None:
    """Add counts written after this process was archived to the archive (prometheus-client's
    own writes would land in the removed files): each by the key and type of the value it adds to."""
    path = multiprocess_dir()
    if path is None or not (counts or observations):
        return
    sums: dict[str, dict[str, float]] = {}

    def add(value: Any, amount: float) -> None:
        typed = sums.setdefault(value._params[0], {})  # prometheus-client's MmapedValue
        typed[value._key] = typed.get(value._key, 0.0) + amount

    for (metric, labels), total in counts.items():
        add((metric.labels(*labels) if labels else metric)._value, total)
    for (metric, labels), values in observations.items():
        child = metric.labels(*labels) if labels else metric
        add(child._sum, sum(values))
        for bucket, n in zip(child._buckets, _per_bucket(child, values), strict=True):
            if n:
                add(bucket, n)
    with _directory_lock(path, fcntl.LOCK_EX, RETIRE_SECONDS) as locked:
        if not locked:
            log.warning(
                "metrics: counts made after this process was archived were dropped (scrapes held the lock)"
            )
            return
        for typ, typed in sums.items():
            _add_to_archive(path, typ, typed)


def _retire_this_process() -> None:
    """At exit: this process's last counts written, then its files added to the archive."""
    path = multiprocess_dir()
    if path is not None:
        TALLY.retire(path)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a number a gauge can show (not a bool, a text or None)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def gauge(
    name: str, documentation: str, value: Any, labels: dict[str, str] | None = None
) -> GaugeMetricFamily | None:
    """One gauge family with one sample, or None when the value is unknown (no sample beats a fake 0):
    None, or anything but a number (a stored evaluation holds what its writer put there)."""
    if not is_number(value):
        return None
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    return family
