"""Hot reload across workers: each worker ends up serving what the reload marker names.

Two :class:`ModelReloader` instances on one model store stand in for two uwsgi workers. Their
pollers are not started: each test calls ``check_marker`` (one poll) itself, and holds loads
at chosen points with events, so every interleaving below happens on every run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import app.services.models as models_module
from app.recommender.bundle import LATEST, BundleError, process_identity, resolve_bundle_dir
from app.services.models import ModelHolder
from app.services.reload import InvalidBundle, ModelReloader, ReloadSuperseded
from tests.serving_helpers import add_version, copy_store

pytestmark = pytest.mark.unit

WAIT = 30.0  # generous: CI shares 2 cores with other test processes


@pytest.fixture
def store(model_store: Path, tmp_path: Path) -> Path:
    return copy_store(model_store, tmp_path / "store")


def _worker(store: Path) -> ModelReloader:
    holder = ModelHolder(store)
    with contextlib.suppress(BundleError):  # as create_app: a worker without a model answers 503
        holder.load()
    reloader = ModelReloader(holder, store, poll_interval=3600)
    reloader.adopt_marker_at_start()
    return reloader


def _serving(worker: ModelReloader) -> str:
    return worker.holder.require().version


def _marker_version(store: Path) -> str:
    return str(json.loads((store / ".serving.json").read_text())["version"])


class _Gate:
    """Holds the load of one bundle directory inside ``load_bundle`` (under the holder's lock, as
    a real load that takes a while) until released."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.entered = threading.Event()
        self.release = threading.Event()

    def holds(self, target: Path) -> bool:
        return not self.release.is_set() and Path(target).resolve() == self.directory


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Gate]]:
    held: list[_Gate] = []
    real = models_module.load_bundle

    def load_bundle(target: Path, *args: Any) -> Any:
        for gate in held:
            if gate.holds(target):
                gate.entered.set()
                assert gate.release.wait(WAIT), "a held load was never released"
        return real(target, *args)

    monkeypatch.setattr(models_module, "load_bundle", load_bundle)
    yield held
    for gate in held:
        gate.release.set()


def _in_thread(call: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_a_sibling_marker_seen_while_this_worker_reloads_does_not_win(
    store: Path, gates: list[_Gate], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's race: ``reload v2`` on worker A, then ``reload <original>`` on worker B.

    B's poller sees A's marker (v2) while B's own reload of the original is loading. That
    reload swaps the original in and writes the newer marker; the poller must not swap v2 in
    after it (B served v2 for good while the marker named the original)."""
    original = resolve_bundle_dir(store).name
    a, b = _worker(store), _worker(store)
    add_version(store, "v2")
    assert a.request("v2", wait=WAIT)["state"] == "loaded"
    assert _serving(a) == _marker_version(store) == "v2"

    gate = _Gate(store / original)
    gates.append(gate)
    assert b.request(original)["state"] == "loading"
    assert gate.entered.wait(WAIT)
    admin_reload = b._loading
    assert admin_reload is not None

    # B's poller runs while B's reload is held mid-load. It may return at once (a load is
    # running here); if it goes on to load the marker's bundle, let it get that far first.
    poller_loads = threading.Event()
    load = b.holder.load

    def spy(target: Path | None = None) -> Any:
        poller_loads.set()
        return load(target)

    monkeypatch.setattr(b.holder, "load", spy)
    poll = _in_thread(b.check_marker)
    while poll.is_alive() and not poller_loads.is_set():
        poll.join(0.01)
    gate.release.set()
    admin_reload.join(WAIT)
    poll.join(WAIT)
    assert not admin_reload.is_alive() and not poll.is_alive()

    assert _marker_version(store) == original
    b.check_marker()  # the next poll
    assert _serving(b) == original, "worker B serves another bundle than the marker names"
    assert b.status()["target"] == original and b.status()["state"] == "loaded"
    a.check_marker()
    assert _serving(a) == original


def test_a_sibling_marker_written_right_after_this_workers_is_followed(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's reload renames its marker into place and B's replaces it at once: A must take B's
    marker as unseen (it took the stat of B's marker for its own, and never followed it)."""
    original = resolve_bundle_dir(store).name
    a, b = _worker(store), _worker(store)
    add_version(store, "v2")
    real_replace = os.replace
    sibling_wrote = threading.Event()

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        if not sibling_wrote.is_set():
            sibling_wrote.set()
            # B reloaded the original; without the marker lock, which A holds (a worker of an
            # earlier release still running beside this one takes none)
            b._write_next_marker((store / original).resolve(), original)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ReloadSuperseded, match=original):  # B's newer marker replaces v2
        a.request("v2", wait=WAIT)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sibling_wrote.is_set()
    assert _serving(a) == "v2" and _marker_version(store) == original

    assert a.check_marker()
    assert _serving(a) == original
    assert not b.check_marker() and _serving(b) == original  # its own marker: nothing to do


def _corrupt_table(bundle: Path) -> None:
    top = np.load(bundle / "segment_top.npy")
    top[0, :2] = top[0, 0]  # a repeated movie: the validator refuses it
    np.save(bundle / "segment_top.npy", top)


def test_a_worker_starting_on_a_marker_naming_a_bad_bundle_logs_one_error_with_the_reason(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that starts where the marker names a bundle it cannot load serves the configured
    one and says so once, naming the bundle and why (each ERROR is mailed by monitor-docker): the
    loader's "model bundle refused" came first, and the start's line named no reason."""
    original = resolve_bundle_dir(store).name
    bad = add_version(store, "v-bad", mutate=_corrupt_table, latest=False)
    marker = {"generation": 1, "target": str(bad), "version": "v-bad"}
    (store / ".serving.json").write_text(json.dumps(marker))
    caplog.clear()
    worker = _worker(store)
    assert _serving(worker) == original
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in errors] == ["app.services.reload"], [(r.name, r.getMessage()) for r in errors]
    assert getattr(errors[0], "target", None) == str(bad)
    assert "segment_top.npy" in getattr(errors[0], "reason", ""), getattr(errors[0], "reason", None)


def test_a_marker_naming_a_bad_bundle_is_tried_once_and_a_refused_reload_writes_none(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = resolve_bundle_dir(store).name
    a, b = _worker(store), _worker(store)
    bad = add_version(store, "v-bad", mutate=_corrupt_table, latest=False)
    with pytest.raises(InvalidBundle):
        a.request("v-bad", wait=WAIT)
    assert not (store / ".serving.json").exists(), "a refused reload must not tell the other workers"
    assert _serving(a) == original

    # a marker naming it all the same (say a worker that read the bundle before it broke)
    (store / ".serving.json").write_text(
        json.dumps({"generation": 1, "target": str(bad), "version": "v-bad"})
    )
    attempts: list[Path] = []
    load = b.holder.load

    def counting(target: Path | None = None) -> Any:
        attempts.append(Path(str(target)))
        return load(target)

    monkeypatch.setattr(b.holder, "load", counting)
    for _ in range(3):
        assert not b.check_marker()
    assert attempts == [bad], "the bad bundle is retried at every poll"
    assert _serving(b) == original
    assert b.status()["state"] == "failed" and b.status()["target"] == "v-bad"

    add_version(store, "v2")
    assert a.request("v2", wait=WAIT)["state"] == "loaded"
    assert b.check_marker() and _serving(b) == "v2"


def test_a_marker_load_finishing_does_not_answer_for_a_reload_requested_meanwhile(
    store: Path, gates: list[_Gate]
) -> None:
    """B's poller loads A's v2; an admin reload of the original arrives on B meanwhile. When the
    poller's load ends, that reload is still loading: it must not read "loaded" (with ``wait``,
    200 for a bundle not loaded) nor wake its waiters."""
    original = resolve_bundle_dir(store).name
    a, b = _worker(store), _worker(store)
    add_version(store, "v2")
    assert a.request("v2", wait=WAIT)["state"] == "loaded"

    marker_load, admin_load = _Gate(store / "v2"), _Gate(store / original)
    gates.extend([marker_load, admin_load])
    poll = _in_thread(b.check_marker)
    assert marker_load.entered.wait(WAIT)
    assert b.request(original)["state"] == "loading"
    marker_load.release.set()
    poll.join(WAIT)
    assert not poll.is_alive()

    status = b.status()
    assert (status["target"], status["state"]) == (original, "loading")
    assert not b._done.is_set()
    admin_load.release.set()
    assert b.request(original, wait=WAIT)["state"] == "loaded"
    assert _serving(b) == _marker_version(store) == original
    assert not b.check_marker() and _serving(b) == original


def _worker_at(path: Path, store: Path) -> ModelReloader:
    """One uwsgi worker (lazy-apps: each builds its own app) started with ML_MODEL_PATH=path."""
    holder = ModelHolder(path)
    holder.load()
    reloader = ModelReloader(holder, store, poll_interval=3600, configured=path)
    reloader.adopt_marker_at_start()
    return reloader


def test_a_recycled_worker_started_with_model_latest_adopts_its_siblings_rollback(store: Path) -> None:
    """ML_MODEL_PATH=model/latest (a bundle directory, README): `configured` is resolved through
    the symlink, so it names the bundle `latest` pointed at when the worker started. Once `latest`
    has moved, a worker recycled after a rollback gets another `configured` than the marker's and
    serves `latest`, while its siblings serve the rolled-back bundle, for good (the marker counts
    as seen)."""
    original = (store / LATEST).resolve().name
    first = _worker_at(store / LATEST, store)
    add_version(store, "v-2")  # training moves latest
    assert first.request(None, wait=WAIT)["state"] == "loaded"
    assert first.request(original, wait=WAIT)["state"] == "loaded"  # rollback, latest stays v-2
    assert _serving(first) == original
    recycled = _worker_at(store / LATEST, store)  # same ML_MODEL_PATH
    assert _serving(recycled) == original
    assert not recycled.check_marker()


def test_a_service_told_to_serve_a_named_bundle_does_not_follow_another_services_reload(store: Path) -> None:
    """The start-up rule (a marker written for another model path is not adopted) does not hold
    for the poller: a running service pinned to a bundle swaps in another service's reload, and
    its workers recycled later go back to the pinned bundle (mixed versions in one service)."""
    add_version(store, "v-pinned", latest=False)
    main = _worker_at(store, store)
    pinned = _worker_at(store / "v-pinned", store)
    add_version(store, "v-3")
    assert main.request(None, wait=WAIT)["state"] == "loaded"
    assert _serving(main) == "v-3"
    pinned.check_marker()
    assert _serving(pinned) == "v-pinned"
    assert _serving(_worker_at(store / "v-pinned", store)) == "v-pinned"


def test_a_reload_removes_the_marker_temporary_file_a_killed_writer_left(store: Path) -> None:
    """A worker killed between writing the marker's temporary file and renaming it into place left
    ``.serving.json.<pid>.<tid>.tmp`` in the store for ever. The next marker write removes it once
    unchanged for an hour, as a bundle write removes a staging directory; a fresh one (another
    worker's, about to be renamed) and other files stay."""
    long_ago = time.time() - 2 * 3600

    def file(name: str, age: float) -> Path:
        (store / name).write_text("{}")
        os.utime(store / name, (age, age))
        return store / name

    stale = file(".serving.json.4242.139872345678912.tmp", long_ago)
    fresh = file(".serving.json.4243.139872345678913.tmp", time.time())
    other = file(".serving.json.tmp", long_ago)
    worker = _worker(store)
    add_version(store, "v2")
    assert worker.request("v2", wait=WAIT)["state"] == "loaded"
    assert _marker_version(store) == "v2"
    assert not stale.exists() and fresh.is_file() and other.is_file()


def _polling_worker(store: Path, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0,
                    refuse: bool = False) -> ModelReloader:  # fmt: skip
    """A sibling worker whose poller runs (as after its first request), its loads slowed or refused."""
    from app.recommender.bundle import BundleError

    worker = _worker(store)
    worker.poll_interval = 0.02
    load = worker.holder.load

    def slow_or_refused(target: Path | None = None) -> Any:
        if target is not None:  # a reload, not the start-up load
            time.sleep(delay)
            if refuse:
                raise BundleError("refused by this worker")
        return load(target)

    monkeypatch.setattr(worker.holder, "load", slow_or_refused)
    worker.ensure_polling()
    return worker


def test_a_waiting_reload_answers_loaded_only_once_every_polling_worker_swapped(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``"wait": true`` answered 200 "loaded" as soon as the worker that got the request had
    swapped and written the marker, while its siblings still served the old bundle."""
    a = _worker(store)
    b = _polling_worker(store, monkeypatch, delay=0.5)
    try:
        add_version(store, "v2")
        answer = a.request("v2", wait=WAIT)
        assert answer["state"] == "loaded", answer
        assert _serving(b) == "v2", "the reload answered loaded while a sibling still served the old bundle"
        assert answer["workers"] == {"total": 2, "swapped": 2, "refused": 0, "waiting": 0}
    finally:
        b.stop()


def test_a_reload_a_sibling_refuses_is_not_reported_loaded(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sibling that refused the bundle (and keeps serving the old one) made no difference to
    the answer: 200 "loaded", and the pipeline recorded the service as reloaded."""
    from app.services.reload import ReloadIncomplete

    original = resolve_bundle_dir(store).name
    a = _worker(store)
    b = _polling_worker(store, monkeypatch, refuse=True)
    try:
        add_version(store, "v2")
        with pytest.raises(ReloadIncomplete, match="1 of 2 workers"):
            a.request("v2", wait=WAIT)
        assert _serving(a) == "v2" and _serving(b) == original
        status = a.status()
        assert status["state"] == "partial" and status["workers"]["refused"] == 1, status
        assert "refused by this worker" in status["error"]
    finally:
        b.stop()


def test_a_reload_whose_marker_cannot_be_written_is_not_reported_loaded(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker swapped the bundle in but could not write the marker (disk full, store made
    read-only): no sibling, and no worker started later, learns of it. It answered 200 "loaded"
    with the reason in ``error``, which ``"wait": true`` callers (the pipeline) read as done."""
    from app.services.reload import ReloadIncomplete

    a = _worker(store)

    def full(target: Path, version: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(a, "_write_marker", full)
    add_version(store, "v2")
    with pytest.raises(ReloadIncomplete, match="other workers were not told"):
        a.request("v2", wait=WAIT)
    assert _serving(a) == "v2"  # swapped here all the same
    assert a.status()["state"] == "partial"


def test_worker_records_of_ended_workers_do_not_pile_up(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's record of what it serves stayed in the store after it ended: one per worker of
    every container (another host name, so never judged by its pid) started over a shared store.
    A worker that stops gracefully removes its own; a polling worker refreshes its record, and
    one nobody refreshed for an hour is removed by the next reload, whichever host wrote it."""
    from app.services import reload as reload_module

    b = _polling_worker(store, monkeypatch)
    workers = store / reload_module.WORKERS_DIR
    mine = b._worker_file()
    assert mine.is_file()
    old = time.time() - 2 * 3600
    for name, host in (("gone.json", "container-gone"), ("alive.json", "container-alive")):
        (workers / name).write_text(
            json.dumps({"host": host, "pid": 1, "generation": 0, "configured": b.configured})
        )
    os.utime(workers / "gone.json", (old, old))
    os.utime(mine, (old, old))
    b._announce_now_and_then(max_age=0)  # the poller's refresh, once its record is that old
    assert mine.stat().st_mtime > old + 3600

    a = _worker(store)
    add_version(store, "v2")
    assert a.request("v2", wait=WAIT)["state"] == "loaded"
    assert not (workers / "gone.json").exists()
    assert (workers / "alive.json").exists()  # another instance's live worker: not this one's to judge

    reload_module.forget_workers_at_exit()  # uwsgi's graceful stop of the worker
    assert not mine.exists()
    b.stop()


def test_a_worker_record_removed_by_the_graceful_stop_is_not_written_again(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uwsgi's graceful stop removed the worker's record, and the worker's poller (still running
    until the process ends) wrote it again at its next refresh or marker: the stopped worker then
    looked alive to a reload waiting for its siblings and to the bundle retention."""
    from app.services import reload as reload_module

    b = _polling_worker(store, monkeypatch)
    mine = b._worker_file()
    assert mine.is_file()
    reload_module.forget_workers_at_exit()
    assert not mine.exists()
    b._announce_now_and_then(max_age=0)  # the poller's refresh
    add_version(store, "v2")
    a = _worker(store)
    a.request("v2", wait=0.0)
    b.check_marker()  # the poller following a marker: it records what it serves
    assert not mine.exists()


def test_a_record_being_written_when_the_worker_stops_is_not_left_behind(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record's writer checked for the stop, then wrote: a stop removing the record between
    the two left the record written after it."""
    from app.services import reload as reload_module

    b = _polling_worker(store, monkeypatch)
    mine = b._worker_file()
    writing, go_on = threading.Event(), threading.Event()
    real_iso = reload_module._iso

    def held_iso(timestamp: float | None) -> str | None:
        if threading.current_thread() is writer:
            writing.set()
            assert go_on.wait(WAIT)
        return real_iso(timestamp)

    monkeypatch.setattr(reload_module, "_iso", held_iso)
    writer = threading.Thread(target=b._announce, daemon=True)
    writer.start()
    assert writing.wait(WAIT)
    stopper = _in_thread(b.stop)
    stopper.join(0.2)
    go_on.set()
    writer.join(WAIT)
    stopper.join(WAIT)
    assert not mine.exists()


@pytest.mark.parametrize(
    "record", [{"pid": "x", "generation": 0}, {"pid": None}, {"pid": 1, "generation": [1]}]
)
def test_a_worker_record_this_code_did_not_write_does_not_leave_the_reload_loading(
    store: Path, record: dict[str, Any]
) -> None:
    """A record in ``.serving-workers`` whose pid or generation is not a number (hand-edited,
    another version's) raised ValueError or TypeError in the thread waiting for the siblings: the
    reload stayed "loading" for good, its ``"wait": true`` callers waited out their whole wait
    (120 s, beyond uwsgi's harakiri) and were told "loading". Such a record is skipped, as an
    unreadable one is."""
    a = _worker(store)
    _sibling_record(a, "odd.json", **record)
    add_version(store, "v2")
    answer = a.request("v2", wait=5.0)
    assert answer["state"] == "loaded", answer
    assert answer["workers"]["total"] == 1


def test_a_sibling_check_that_fails_is_reported_not_left_loading(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the check of the sibling workers raises (the store unreadable meanwhile), the
    reload ends: partial, saying why, never "loading" for ever."""
    from app.services.reload import ReloadIncomplete

    a = _worker(store)

    def broken(_generation: int, _target: Path) -> tuple[list[str], list[str], int]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(a, "_siblings", broken)
    add_version(store, "v2")
    with pytest.raises(ReloadIncomplete, match="could not be checked"):
        a.request("v2", wait=5.0)
    assert a.status()["state"] == "partial"
    assert _serving(a) == "v2"


def test_a_waiting_reload_answers_before_uwsgi_or_the_pipeline_give_up_on_it() -> None:
    """The reloading worker waited up to 60 s for its siblings, on top of its own load, inside the
    request: uwsgi's harakiri (30 s; on an idle service nothing else moves its deadline) SIGKILLed
    that worker before it could answer, and the pipeline's client gave up at 60 s, so the
    documented 503 ``reload_incomplete`` naming the workers that did not follow reached nobody.
    The wait (one poll of the siblings, then ``SIBLING_WAIT_SECONDS``) leaves at least 10 s of
    either for the worker's own load."""
    from app.config import Settings
    from app.registry.export import RELOAD_TIMEOUT_SECONDS
    from app.services import reload as reload_module
    from tests.helpers import uwsgi_stop_seconds

    harakiri, _mercy = uwsgi_stop_seconds()
    poll = Settings.model_fields["reload_poll_seconds"].default
    longest = poll + reload_module.SIBLING_WAIT_SECONDS
    assert longest + 10 <= min(harakiri, RELOAD_TIMEOUT_SECONDS), (longest, harakiri, RELOAD_TIMEOUT_SECONDS)


def _sibling_record(worker: ModelReloader, name: str, **fields: Any) -> Path:
    """Write the record ``name`` of a sibling of ``worker`` (this host, its model path) in the
    store's ``.serving-workers``: a worker of another process, as far as ``worker`` can tell."""
    from app.services import reload as reload_module

    worker.workers_dir.mkdir(exist_ok=True)
    path = worker.workers_dir / name
    path.write_text(json.dumps({"host": reload_module._HOST, "configured": worker.configured,
                                "generation": 0, **fields}))  # fmt: skip
    return path


REUSED_PID = {"pid": os.getppid(), "started": "00000000-0000-0000-0000-000000000000/1"}
"""A worker killed outright (SIGKILL, the OOM killer, ``docker kill``) whose pid a live process
took since, as in a container restarted by its restart policy (its pids start again from 1): the
pid of this test's parent, with a start time that is not that process's."""


@pytest.mark.parametrize(
    "started",
    [pytest.param(None, id="recorded-without-start-time"), pytest.param(True, id="recorded-start-time")],
)
def test_a_sibling_that_never_follows_is_waited_for_one_poll_and_the_sibling_wait(
    store: Path, monkeypatch: pytest.MonkeyPatch, started: bool | None
) -> None:
    """A live sibling that does not handle the marker (its poller stuck) is reported, once the
    wait is over, as a worker that did not take the bundle: 503 partial, not a hang. Its record
    holds its start time beside its pid, or none (written where ``/proc`` cannot tell, or by an
    earlier release): the pid alone then says it is alive."""
    from app.services import reload as reload_module
    from app.services.reload import ReloadIncomplete

    monkeypatch.setattr(reload_module, "SIBLING_WAIT_SECONDS", 0.3)
    a = _worker(store)
    a.poll_interval = 0.2
    identity = process_identity(os.getppid()) if started else None
    _sibling_record(a, "stuck.json", pid=os.getppid(), started=identity)
    add_version(store, "v2")
    started = time.monotonic()
    with pytest.raises(ReloadIncomplete, match=r"1 did not take it within 0\.5s"):
        a.request("v2", wait=WAIT)
    assert 0.5 <= time.monotonic() - started < WAIT
    assert a.status()["workers"] == {"total": 2, "swapped": 1, "refused": 0, "waiting": 1}


def test_two_reloads_writing_the_marker_at_once_get_distinct_generations(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers A and B each read the marker's generation, then wrote it plus one: two reloads
    started at the same instant wrote the same generation, and a waiting reload took the other
    bundle's marker for its own (both admins got 503, or one 200 for a bundle being replaced).
    The read-increment-write is one step across processes (a ``flock`` beside the marker)."""
    original = resolve_bundle_dir(store).name
    a, b = _worker(store), _worker(store)
    add_version(store, "v2")
    a_read, proceed = threading.Event(), threading.Event()
    read = a._read_marker_with_stat

    def read_then_pause() -> Any:
        found = read()
        if not a_read.is_set():
            a_read.set()
            proceed.wait(WAIT)
        return found

    monkeypatch.setattr(a, "_read_marker_with_stat", read_then_pause)
    writer_a = _in_thread(lambda: a._write_marker((store / "v2").resolve(), "v2"))
    assert a_read.wait(WAIT)
    writer_b = _in_thread(lambda: b._write_marker((store / original).resolve(), original))
    writer_b.join(0.5)  # without the lock B writes now, from the marker A also read
    proceed.set()
    writer_a.join(WAIT)
    writer_b.join(WAIT)
    assert not writer_a.is_alive() and not writer_b.is_alive()
    assert sorted((a._generation, b._generation)) == [1, 2], "two marker writes share a generation"
    marker = json.loads((store / ".serving.json").read_text())
    assert marker["generation"] == 2
    assert marker["version"] == (original if b._generation == 2 else "v2")


def _write_marker_once_it_names(
    store: Path, version: str, writer: ModelReloader, target: str
) -> threading.Thread:
    """Another worker's reload of ``target``, written as soon as the marker names ``version``."""

    def write() -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if _marker_version(store) == version:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        writer._write_marker((store / target).resolve(), target)

    return _in_thread(write)


def test_a_reload_superseded_while_waiting_for_its_siblings_is_not_reported_loaded(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reloads v2 and waits for sibling B; meanwhile worker C's reload of v3 writes a newer
    marker. A counted a sibling that had handled the newer marker as "swapped" (or B's record of
    v2) and answered 200 "loaded" for v2, which the workers are replacing with v3."""
    a, c = _worker(store), _worker(store)
    b = _polling_worker(store, monkeypatch, delay=1.0)
    try:
        add_version(store, "v2")
        add_version(store, "v3", latest=False)
        newer = _write_marker_once_it_names(store, "v2", c, "v3")
        with pytest.raises(ReloadSuperseded, match="v3"):
            a.request("v2", wait=WAIT)
        newer.join(WAIT)
        status = a.status()
        assert (status["state"], status["target"]) == ("superseded", "v2"), status
        assert "v3" in status["error"]
    finally:
        b.stop()


def test_a_reload_superseded_by_a_reload_of_the_same_bundle_waits_for_that_one(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two admins reload v2 at once on two workers: the first one's wait follows the second's
    (newer) marker, which names the same bundle, and answers "loaded" once every worker serves it."""
    a, c = _worker(store), _worker(store)
    b = _polling_worker(store, monkeypatch, delay=0.5)
    try:
        add_version(store, "v2")
        newer = _write_marker_once_it_names(store, "v2", c, "v2")
        answer = a.request("v2", wait=WAIT)
        newer.join(WAIT)
        assert answer["state"] == "loaded", answer
        assert _serving(b) == "v2" and b._generation == 2
    finally:
        b.stop()


def test_a_worker_recycled_after_latest_moved_serves_what_its_siblings_serve(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training (``make train``, or a pipeline run whose reload request failed) moves ``latest``
    without a reload. A worker uwsgi recycled then (max-requests, harakiri, reload-on-rss) loaded
    the new ``latest`` while its siblings kept the bundle the instance serves: two versions in one
    service until a reload, each request's answer depending on the worker it reached. It now
    serves what its live siblings serve; a service started afresh (no live worker of its own)
    still serves ``latest``."""
    original = resolve_bundle_dir(store).name
    sibling = _polling_worker(store, monkeypatch)
    try:
        add_version(store, "v-trained")  # latest moves; nobody asks for a reload
        recycled = _worker(store)
        assert _serving(recycled) == _serving(sibling) == original
        # a rollback, then training again: the marker is older than `latest`
        assert sibling.request("v-trained", wait=WAIT)["state"] == "loaded"
        assert sibling.request(original, wait=WAIT)["state"] == "loaded"
        time.sleep(0.01)
        add_version(store, "v-trained-again")
        assert _serving(_worker(store)) == original
    finally:
        sibling.stop()
    assert _serving(_worker(store)) == "v-trained-again"  # a restart: no live sibling


def test_a_worker_recycled_after_a_bad_bundle_became_latest_keeps_serving_the_good_one(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle the running workers refused (a reload of ``latest`` answered 422) stays
    ``latest``. A worker uwsgi started then loaded ``latest`` as configured, was refused it too,
    and answered every request 503 (no model), half the traffic with two workers, while its
    sibling served the previous bundle: "the old one keeps serving" held for the workers that were
    running only."""
    original = resolve_bundle_dir(store).name
    sibling = _polling_worker(store, monkeypatch)
    try:
        add_version(store, "v-bad", mutate=_corrupt_table)
        with pytest.raises(InvalidBundle):
            sibling.request(None, wait=WAIT)
        assert _serving(_worker(store)) == _serving(sibling) == original
    finally:
        sibling.stop()


def test_a_reload_does_not_wait_for_a_killed_worker_whose_pid_a_new_process_took(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record was judged alive by its pid alone: after a container restart, a killed worker's
    record whose pid a new process had taken was waited for until the wait ended, and the reload
    answered 503 partial ("1 did not take it") for an hour, until the record was old enough to be
    dropped. The record holds its worker's start time: a process started at another time is not
    that worker, its record is removed, and the reload is answered for the live workers."""
    from app.services import reload as reload_module

    monkeypatch.setattr(reload_module, "SIBLING_WAIT_SECONDS", 0.3)
    a = _worker(store)
    a.poll_interval = 0.2
    record = _sibling_record(a, "killed.json", **REUSED_PID)
    add_version(store, "v2")
    answer = a.request("v2", wait=WAIT)
    assert answer["state"] == "loaded", answer
    assert answer["workers"] == {"total": 1, "swapped": 1, "refused": 0, "waiting": 0}
    assert not record.exists()


@pytest.mark.parametrize(
    "reused",
    [
        pytest.param(REUSED_PID, id="worker-pid-reused"),
        # a live process as the worker, its true start time; the master's pid taken by a new master
        pytest.param(
            {"pid": os.getppid(), "instance_started": REUSED_PID["started"]}, id="master-pid-reused"
        ),
    ],
)
def test_a_worker_started_after_a_container_restart_serves_latest_not_a_killed_workers_bundle(
    store: Path, reused: dict[str, Any]
) -> None:
    """After a container restart the new uwsgi master had the old one's pid (1, 7) and the new
    workers the killed workers' pids: a new worker took a killed worker's record (same pid, same
    ``instance``) for a live sibling of its own instance and served the bundle that record named
    instead of ``latest``. A record names its worker's and its master's start times beside their
    pids; one whose pid is now another process's is no live sibling of this instance."""
    from app.services import reload as reload_module

    add_version(store, "v-old")
    add_version(store, "v-new")  # latest, what the restarted service is configured to serve
    fields = {"instance": reload_module._instance(), "instance_started": process_identity(os.getpid()),
              "started": process_identity(os.getppid()), **reused}  # fmt: skip
    worker = _worker_with_record_of(store, target=str(store / "v-old"), generation=7, **fields)
    assert _serving(worker) == "v-new"


def _worker_with_record_of(store: Path, **fields: Any) -> ModelReloader:
    """A worker starting beside the record ``fields`` of a sibling of its instance."""
    probe = ModelReloader(ModelHolder(store), store, poll_interval=3600)
    _sibling_record(probe, "sibling.json", **fields)
    return _worker(store)


def test_a_worker_started_beside_a_live_sibling_with_its_start_time_serves_what_it_serves(
    store: Path,
) -> None:
    """A record whose worker and master are the processes it names (their pids and start times)
    is a live sibling of this instance: a worker started beside it serves its bundle, as before."""
    from app.services import reload as reload_module

    add_version(store, "v-old")
    add_version(store, "v-new")
    worker = _worker_with_record_of(
        store, target=str(store / "v-old"), generation=7, pid=os.getppid(),
        started=process_identity(os.getppid()), instance=reload_module._instance(),
        instance_started=process_identity(os.getpid()),
    )  # fmt: skip
    assert _serving(worker) == "v-old"


def test_a_worker_started_after_the_reloading_worker_ended_reports_the_last_reload(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker reports the last reload an admin asked any live worker for, from their
    records. Once the worker that ran the last reload had ended (uwsgi recycled it: max-requests,
    reload-on-rss), a worker started since, serving that reload's bundle from the marker, reported
    an older reload another worker had run (its target another bundle, or "failed") as the
    service's last one, while that worker, having followed the marker, reported the last. Every
    worker now reports the reload that wrote the marker as the last."""
    add_version(store, "v1")
    add_version(store, "v2")
    a = _polling_worker(store, monkeypatch)
    b = _polling_worker(store, monkeypatch)
    c = None
    try:
        assert a.request("v1", wait=WAIT)["state"] == "loaded"
        assert b.request("v2", wait=WAIT)["state"] == "loaded"
        assert _serving(a) == "v2" and a.instance_status()["target"] == "v2"
        b.stop()  # recycled: its record, which carried the last reload, is gone
        c = _polling_worker(store, monkeypatch)
        assert _serving(c) == "v2"
        statuses = (a.instance_status(), c.instance_status())
        reported = [(status["state"], status["target"]) for status in statuses]
        assert reported == [("loaded", "v2")] * 2, reported
    finally:
        for worker in (a, b, c):
            if worker is not None:
                worker.stop()
