"""Hot reload: load the model store's current bundle in the background and swap it in every worker.

Under uwsgi each worker process holds its own :class:`ModelHolder`, and ``POST
/api/admin/reload`` reaches only one of them. That worker loads and validates the bundle in
a background thread (serving goes on with the old one), swaps it in, and only then writes a
small **generation marker** file next to the model store: ``{"generation", "target",
"version"}``, replaced atomically. The generation is read, incremented and written under an
``flock`` on ``.serving.json.lock`` beside the marker: two reloads started at the same instant in
two workers each wrote the generation they had both read plus one, and a reload waiting for its
siblings took the other bundle's marker for its own. Every worker runs a poller thread that stats the marker
once per ``poll_interval`` (a ``stat`` call: microseconds) and, when it changed and names a
bundle other than the one it serves, loads that exact directory and swaps it in. A bundle
that fails to load is refused where it fails: the marker is not written (the first worker)
or the worker keeps its old bundle and reports the error (the others).

Within one process, a reload's "load, swap, write the marker" and the poller's "read the
marker, load, swap" are one step each under one lock, and the poller reads the marker again
once it holds that lock. A poller that saw a sibling's marker while this worker's own reload
was loading swapped the sibling's (older) bundle in after that reload had written the newer
marker, and as the marker's stat no longer changed, the worker served the wrong version for
good. The marker's stat remembered is always the stat of the content acted on (read through
one file descriptor; a worker's own marker is stat'ed before it is renamed into place), so a
marker replaced at any moment is read again at the next poll.

Every worker whose poller runs also writes what it serves, and the marker generation it last
handled, to ``<store>/.serving-workers/<host>-<pid>-<id>.json``, with its pid and its master's
(``instance``), each beside that process's start time (:func:`process_identity`): a record is a
live worker's only while its pid runs and started then. In a container restarted by its restart
policy the new processes get the killed ones' pids, and a killed worker's record was taken for a
live sibling (waited for by a reload, its bundle served by a new worker) until an hour old.
The worker that reloaded waits
(up to one poll interval plus ``SIBLING_WAIT_SECONDS``) until each live sibling on this host has
handled its marker before it reports the reload: ``loaded`` once every one of them serves the
bundle, ``partial`` when one refused it or did not answer in time (those keep serving the
previous bundle), and ``superseded`` when another worker's reload wrote a newer marker naming
another bundle meanwhile (one naming the same bundle is waited for instead). A reload answered
``loaded`` while the siblings still served the old bundle, had refused the new one, or were
already swapping in a newer reload's, told the admin and the pipeline the service was reloaded
when it was not. A worker
without a poller has served no request yet: it checks the marker before its first answer.

Every worker reports the last reload an admin asked any live worker for (its record carries
it: :meth:`ModelReloader.instance_status`), not only the worker that runs it.

A worker started later (uwsgi recycles workers) serves the marker's bundle when the marker
is newer than the store's ``latest`` link, so a rollback to an older version survives worker
restarts; otherwise what the live workers of its instance serve (training may have moved
``latest`` without a reload), and ``latest`` as configured when there are none (a start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.durable import exclusive_lock, sync_directory, write_synced
from app.errors import ApiError, InvalidRequest, NotFound
from app.exit_hooks import at_exit
from app.monitoring.logs import describe_error
from app.recommender.bundle import (
    BUNDLE_NAME,
    LATEST,
    MANIFEST,
    MARKER_NAME,
    STALE_STAGING_SECONDS,
    WORKERS_DIR,
    BundleError,
    LoadedBundle,
    process_alive,
    process_identity,
    remove_stale_leftovers,
    resolve_bundle_dir,
    same_process,
)
from app.services.models import ModelHolder

log = logging.getLogger(__name__)

"""Where each polling worker says what it serves (in the model store, beside the marker)."""
SIBLING_WAIT_SECONDS = 15.0
"""How long a reload waits for its sibling workers to handle its marker, beyond one poll interval,
before it reports. The wait is inside the request (``"wait": true``): with the worker's own load it
must end well within uwsgi's harakiri (30 s; nothing else moves its deadline on an idle service)
and the pipeline's 60 s (app/registry/export.py), or the worker is killed, the caller gives up,
and the answer naming the workers that did not follow reaches nobody. It was 60 s."""


def longest_sibling_wait(poll_interval: float) -> float:
    """How long a reload waits at most for its sibling workers: each sees the marker at its next
    poll, then has ``SIBLING_WAIT_SECONDS`` to load it. uwsgi refuses to start when this does not
    end within harakiri (app/__init__.py), where a reload would be killed in the middle."""
    return poll_interval + SIBLING_WAIT_SECONDS


ANNOUNCE_REFRESH_SECONDS = 600.0
"""How often a polling worker rewrites its record unchanged: one untouched for
``STALE_STAGING_SECONDS`` belongs to a worker that ended without removing it (any host's)."""
_HOST = socket.gethostname()
_LIVE: weakref.WeakSet[ModelReloader] = weakref.WeakSet()
"""The reloaders of this process (tests run several "workers" in one process)."""


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds") if timestamp else None


class InvalidBundle(ApiError):
    """The requested bundle could not be loaded; the old one keeps serving."""

    status = 422
    CODE = "invalid_bundle"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=self.CODE)


class ReloadInProgress(ApiError):
    """A reload of another bundle is running; this one is not started (nor silently dropped)."""

    status = 409
    CODE = "reload_in_progress"

    def __init__(self, running: str) -> None:
        super().__init__(
            f"a reload of bundle {running} is in progress; retry when it has finished", code=self.CODE
        )


class ReloadIncomplete(ApiError):
    """The bundle was swapped in by some workers only; the others serve the previous one."""

    status = 503
    CODE = "reload_incomplete"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=self.CODE)


class ReloadSuperseded(ApiError):
    """A newer reload (of another bundle) was started while this one waited for the workers."""

    status = 409
    CODE = "reload_superseded"

    def __init__(self, message: str) -> None:
        super().__init__(message, code=self.CODE)


class ModelReloader:
    """Per-process reload state plus the marker that carries a reload to sibling workers."""

    def __init__(
        self,
        holder: ModelHolder,
        store: Path,
        marker: Path | None = None,
        poll_interval: float = 1.0,
        configured: Path | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        # the model path this service was started with (ML_MODEL_PATH): a marker written by a
        # service started with another one is not adopted at start (see _adopt_marker)
        self.configured = model_path_key(configured) if configured is not None else None
        self.marker = marker or store / MARKER_NAME
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        # One load-and-swap at a time in this process (the admin reload with its marker write,
        # or the poller's); taken before ``_lock`` when both are held.
        self._load_lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self._status: dict[str, Any] = {"state": "idle"}
        # when the reload ``_status`` describes was asked for (time.time_ns(); a marker's load: the
        # reload that wrote the marker), -1 before any
        self._status_ns = -1
        # the last reload an admin asked this worker for (the same dict as ``_status`` until the
        # poller loads a marker) and when: this worker's record carries both, so that every worker
        # reports the last reload of the service, not its own state (instance_status)
        self._requested: dict[str, Any] | None = None
        self._requested_ns = -1
        self._marker_seen: tuple[int, int, int] | None = None
        self._poller_pid: int | None = None
        self._stop = threading.Event()
        self._generation = 0  # the marker generation this worker last handled
        self.workers_dir = self.marker.parent / WORKERS_DIR
        self._announced = 0.0  # time.monotonic() of this worker's last record
        self._announced_error: str | None = None  # why it refused the marker it last handled
        # Held while the record is written and while a stop removes it: a write that had checked
        # for the stop just before it came wrote the record again after its removal.
        self._record_lock = threading.Lock()
        _LIVE.add(self)

    # ------------------------------------------------------------------ start-up

    def adopt_marker_at_start(self) -> None:
        """Serve the marker's bundle when a reload happened after ``latest`` last moved."""
        with self._load_lock:
            self._adopt_marker()

    def _adopt_marker(self) -> None:
        """The marker's bundle when a reload happened after ``latest`` last moved; else, in a
        worker started beside live ones of its instance (uwsgi recycled it), what they serve."""
        marker, marker_stat = self._read_marker_with_stat()
        if marker is not None:
            self._marker_seen = marker_stat
            self._generation = _generation_of(marker)
        target = self._marker_target(marker, marker_stat) or self._siblings_bundle()
        if target is None:
            return
        current = self.holder.bundle
        if current is None or current.path.resolve() != target.resolve():
            try:
                self.holder.load(target)
            except BundleError as exc:
                log.error(
                    "the bundle the reload marker or the other workers name cannot be loaded; serving "
                    "the configured one",
                    extra={"target": str(target), "reason": describe_error(exc, 500)},
                )
                return
        if marker is not None and _same(marker.get("target"), target):
            self._report_marker_reload(marker, target)

    def _report_marker_reload(self, marker: dict[str, Any], target: Path) -> None:
        """Report the reload that wrote ``marker``, whose bundle this worker serves from its start,
        as its last: as a worker that followed the marker does (:meth:`_follow_marker`).

        A worker started after the one that ran the last reload had ended (uwsgi recycled it)
        reported "idle" itself, so :meth:`instance_status` named an older reload of another live
        worker as the service's last one (its target another bundle, or "failed") beside the
        bundle served, while that worker, having followed the marker, reported the last one."""
        status, done = self._new_load(target.name, marker.get("at"), via="marker")
        status.update(state="loaded", finished_at=_iso(time.time()))
        done.set()
        with self._lock:
            self._status, self._done = status, done
            self._status_ns = _requested_ns_of(marker)

    def _marker_target(
        self, marker: dict[str, Any] | None, marker_stat: tuple[int, int, int] | None
    ) -> Path | None:
        """The marker's bundle, when it names one for this model path written after ``latest``
        last moved (training moving ``latest`` later wins over an old reload)."""
        if marker is None or not isinstance(marker.get("target"), str):
            return None
        target = Path(marker["target"])
        if not (target / MANIFEST).is_file() or self._written_for_another_path(marker):
            return None
        try:
            latest_mtime = (self.store / LATEST).lstat().st_mtime_ns
        except OSError:
            latest_mtime = 0
        if marker_stat is None or marker_stat[0] < latest_mtime:
            return None
        return target

    def _siblings_bundle(self) -> Path | None:
        """The bundle the live workers of this instance serve (the one that handled the newest
        marker), or None when there is none (a service starting: it serves what is configured).

        A worker uwsgi starts in a running instance (max-requests, reload-on-rss, harakiri, a
        crash) loaded the configured path, the store's ``latest``: once training had moved it
        without a reload, that worker served the new bundle while its siblings kept the one the
        instance serves, two versions in one service until the next reload."""
        instance = _instance()
        started = process_identity(instance)
        newest: tuple[int, Path] | None = None
        for _name, worker in self._live_siblings():
            served = worker.get("target")
            if worker.get("instance") != instance or not isinstance(served, str):
                continue
            if not same_process(_identity(worker, "instance_started"), started):
                continue  # its master had this master's pid: an instance that ended (a restart)
            if not (Path(served) / MANIFEST).is_file():
                continue
            if newest is None or worker["generation"] > newest[0]:
                newest = (worker["generation"], Path(served))
        return newest[1] if newest else None

    def _written_for_another_path(self, marker: dict[str, Any]) -> bool:
        """The marker is a reload of a service started with another model path (an earlier
        `make serve-prod` over the same store, or one running beside this one): this one was told
        to serve ML_MODEL_PATH, not that bundle, at start and while it runs alike."""
        written_for = marker.get("configured")
        if written_for is None or self.configured is None or written_for == self.configured:
            return False
        log.info(
            "not following the reload marker: it was written for another model path",
            extra={"marker_model_path": written_for, "model_path": self.configured},
        )
        return True

    # ------------------------------------------------------------------ admin reload

    def resolve_target(self, version: str | None = None) -> Path:
        """The bundle directory a reload should load: a named version, else the store's ``latest``."""
        if version is not None:
            if not BUNDLE_NAME.match(version):
                raise InvalidRequest("invalid version", fields={"version": "must be a bundle version name"})
            candidate = self.store / version
            if not (candidate / MANIFEST).is_file():
                raise NotFound(f"no bundle {version} in the model store")
            return candidate.resolve()
        try:
            return resolve_bundle_dir(self.store).resolve()
        except BundleError:
            pass
        try:
            return resolve_bundle_dir(self.holder.path).resolve()
        except BundleError as exc:
            raise InvalidBundle(str(exc)) from exc

    def request(self, version: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Start a background reload (one at a time); with ``wait``, block up to that many seconds.

        A request for the bundle already loading joins that load; one for another bundle while
        it runs is refused with 409 (it was dropped, and with ``wait`` answered 200 "loaded" for
        the other bundle).
        """
        try:
            target = self.resolve_target(version)
        except InvalidBundle as exc:  # the store's ``latest`` names nothing loadable: no load to run
            self._refuse_unresolved(str(exc))
            raise
        started = False
        with self._lock:
            if self._loading is not None and self._loading.is_alive():
                if self._status["target"] != target.name:  # joining it would answer for another bundle
                    raise ReloadInProgress(self._status["target"])
            else:
                self._new_request(target.name)
                self._loading = threading.Thread(
                    target=self._load_and_announce,
                    args=(target, self._status, self._done),
                    name="movierec-reload",
                    daemon=True,
                )
                self._loading.start()
                started = True
            # The load this request started or joined: with ``wait`` it answers for that one, not
            # for whatever another request started between its end and this thread waking up.
            mine, done = self._status, self._done
        if started:
            self._announce(self._announced_error)  # the other workers report it from now on
        if wait:
            done.wait(wait)
            with self._lock:
                status = dict(mine)
            if status["state"] == "failed":
                raise InvalidBundle(f"bundle {status['target']} was refused: {status['error']}")
            if status["state"] == "partial":
                raise ReloadIncomplete(str(status["error"]))
            if status["state"] == "superseded":
                raise ReloadSuperseded(str(status["error"]))
            return status
        return self.status()

    def _refuse_unresolved(self, error: str) -> None:
        """Record and log a reload refused before any load: the model store's ``latest`` names no
        bundle (one removed, a dangling link). It was answered 422 and nothing else: no log line
        (a bundle that fails to load is one ERROR, and a restart now serves no model), and every
        worker went on reporting the previous reload as the last. A load running meanwhile keeps
        its status: the request is refused, its own state is not the service's."""
        with self._lock:
            if self._loading is not None and self._loading.is_alive():
                status = None
            else:
                self._new_request(LATEST)
                status, done = self._status, self._done
        if status is None:
            self._log_refused(LATEST, error)
        else:
            self._finish(status, done, "failed", error)

    def _new_request(self, target: str) -> None:
        """Make a reload of ``target`` asked for now this worker's status (``_lock`` held)."""
        self._status, self._done = self._new_load(target, _iso(time.time()))
        self._requested, self._requested_ns = self._status, time.time_ns()
        self._status_ns = self._requested_ns

    @staticmethod
    def _new_load(
        target: str, requested_at: str | None, **extra: Any
    ) -> tuple[dict[str, Any], threading.Event]:
        """The status of a load about to start, and the event set when it ends (one each per load)."""
        status = {"state": "loading", "target": target, "requested_at": requested_at, "finished_at": None,
                  "error": None, **extra}  # fmt: skip
        return status, threading.Event()

    def status(self) -> dict[str, Any]:
        """This worker's reload state: the last load it ran (an admin's reload, or a marker's)."""
        with self._lock:
            return dict(self._status)

    def instance_status(self) -> dict[str, Any]:
        """The state of the last reload an admin asked any live worker of this service for (from
        their records), or this worker's own when none asked one since it loaded.

        ``GET /api/model`` reaches any worker, a reload runs in one: the others reported their
        own state, "idle" or the previous reload's "loaded" (its target the bundle they serve)
        while the new one loaded and after it was refused, so an admin polling after a 202 read,
        every other request, that the new bundle was in."""
        with self._lock:
            # a marker's load loses to the reload that wrote the marker: that worker's view of the
            # whole reload (still loading while it waits for the others; partial, superseded)
            newest = (self._status_ns, self._status is self._requested, dict(self._status))
        for _name, worker in self._live_siblings():
            asked, asked_ns = worker.get("reload"), worker.get("reload_ns")
            if isinstance(asked, dict) and type(asked_ns) is int and (asked_ns, True) > newest[:2]:
                newest = (asked_ns, True, asked)
        return newest[2]

    def _load_and_announce(self, target: Path, status: dict[str, Any], done: threading.Event) -> None:
        """Load, swap and write the marker as one step: the poller cannot swap in between; then
        wait for the sibling workers to follow before reporting the outcome."""
        with self._load_lock:
            state, error = self._load_and_write_marker(target)
            generation = self._generation
        if state == "loaded" and error is None:
            try:
                state, error = self._await_siblings(generation, target, status)
            except Exception as exc:  # the status must not stay "loading" (nor its waiters wait) for ever
                log.exception("reload: the sibling workers could not be checked")
                state = "partial"
                error = f"swapped in here, but the other workers could not be checked: {exc}"
        self._finish(status, done, state, error)

    def _await_siblings(
        self, generation: int, target: Path, status: dict[str, Any]
    ) -> tuple[str, str | None]:
        """Wait until every live sibling handled marker ``generation``; "loaded" when all of
        them serve ``target``, else "partial" and which did not.

        A newer marker written meanwhile (another worker's reload) supersedes this one: when it
        names ``target`` too, the wait goes on for it; else the answer is "superseded", naming
        the bundle that replaces this one (siblings that handled it serve that one, not
        ``target``: counted as "swapped", they made a reload of a bundle being replaced
        "loaded").
        """
        wait = longest_sibling_wait(self.poll_interval)
        deadline = time.monotonic() + wait
        while True:
            # the siblings first: one that handled a newer marker than ``generation`` was read
            # before the marker, which then names that generation or a newer one
            swapped, refused, waiting, newest = self._siblings(generation, target)
            marker = self._read_marker_with_stat()[0] or {}
            marker_generation = _generation_of(marker)
            if marker_generation > generation and _same(marker.get("target"), target):
                generation = marker_generation  # a newer reload of this very bundle: wait for it
                continue
            if marker_generation > generation or newest > generation:
                return "superseded", self._superseded(
                    target, marker if marker_generation > generation else {}
                )
            with self._lock:
                status["workers"] = {
                    "total": 1 + len(swapped) + len(refused) + waiting,
                    "swapped": 1 + len(swapped),
                    "refused": len(refused),
                    "waiting": waiting,
                }
            if not waiting or time.monotonic() >= deadline or self._stop.is_set():
                break
            time.sleep(min(0.05, self.poll_interval / 4))
        if not refused and not waiting:
            return "loaded", None
        counts = status["workers"]
        parts = [f"bundle {target.name} was swapped in {counts['swapped']} of {counts['total']} workers"]
        if refused:
            parts.append(f"{len(refused)} refused it ({'; '.join(refused)[:400]})")
        if waiting:
            parts.append(f"{waiting} did not take it within {wait:g}s")
        message = "; ".join(parts) + ": those serve the previous bundle; reload again to retry"
        log.error("reload incomplete", extra={"reason": message})
        return "partial", message

    @staticmethod
    def _superseded(target: Path, marker: dict[str, Any]) -> str:
        by = (
            f"a newer reload (of bundle {marker.get('version')})"
            if marker.get("version")
            else "a newer reload"
        )
        message = (
            f"the reload of bundle {target.name} was superseded by {by} before every worker had "
            "taken it: the workers follow the newer one"
        )
        log.warning("reload superseded", extra={"reason": message})
        return message

    def _siblings(self, generation: int, target: Path) -> tuple[list[str], list[str], int, int]:
        """The live sibling workers that serve ``target`` after marker ``generation``, the
        errors of those that refused it, how many have not handled it, and the newest marker
        generation a sibling handled (one newer than ``generation`` superseded it)."""
        swapped: list[str] = []
        refused: list[str] = []
        waiting = 0
        newest = 0
        for name, worker in self._live_siblings():
            handled = worker["generation"]
            newest = max(newest, handled)
            if handled == generation and _same(worker.get("target"), target):
                swapped.append(name)
            elif handled == generation:
                refused.append(str(worker.get("error") or f"serves {worker.get('version')}"))
            elif handled < generation:
                waiting += 1
        return swapped, refused, waiting, newest

    def _live_siblings(self) -> list[tuple[str, dict[str, Any]]]:
        """The records of the live workers on this host, other than this one, started with this
        model path (the name of each record's file, and the record); those of ended workers are
        removed on the way."""
        found: list[tuple[str, dict[str, Any]]] = []
        mine = self._worker_file()
        live_here = {reloader._worker_file().name for reloader in list(_LIVE) if not reloader._stop.is_set()}
        try:
            files = sorted(self.workers_dir.glob("*.json"))
        except OSError:
            return found
        stale = time.time() - STALE_STAGING_SECONDS
        for path in files:
            if path.name == mine.name:
                continue
            try:
                if path.stat().st_mtime < stale:  # its worker refreshes it far more often: it ended
                    path.unlink()
                    continue
                worker = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # gone meanwhile
            if not isinstance(worker, dict) or worker.get("host") != _HOST:
                continue  # another instance's worker: not this service's to wait for
            if worker.get("configured") != self.configured:
                continue  # a service started with another model path does not follow this marker
            pid, handled = worker.get("pid"), worker.get("generation", 0)
            if type(pid) is not int or type(handled) is not int:  # JSON's true is no number either
                continue  # not a record this code writes
            if pid == os.getpid():
                alive = path.name in live_here
            else:  # a pid that a process started since took (a container restarted) is not its worker
                alive = pid > 0 and process_alive(pid, _identity(worker, "started"))
            if not alive:
                with contextlib.suppress(OSError):  # an ended worker's (uwsgi recycled it)
                    path.unlink(missing_ok=True)
                continue
            found.append((path.name, {**worker, "generation": handled}))
        return found

    def _worker_file(self) -> Path:
        return self.workers_dir / f"{_HOST}-{os.getpid()}-{id(self):x}.json"

    def _announce(self, error: str | None = None) -> None:
        """Write what this worker serves and the marker generation it handled (a polling worker's).

        Never after :meth:`stop` removed the record: a stopped worker's record, written again by
        its poller or a reload still running, made it look alive to a reload waiting for its
        siblings and to the bundle retention."""
        with self._record_lock:
            if self._poller_pid == os.getpid() and not self._stop.is_set():
                self._write_record(error)

    def _write_record(self, error: str | None) -> None:
        bundle = self.holder.bundle
        body = {
            "host": _HOST,
            "pid": os.getpid(),
            "started": process_identity(os.getpid()),  # beside the pid: tells it from a reused one
            "instance": _instance(),
            "instance_started": process_identity(_instance()),
            "configured": self.configured,
            "generation": self._generation,
            "target": str(bundle.path) if bundle else None,
            "version": bundle.version if bundle else None,
            "error": error,
            "at": _iso(time.time()),
        }
        with self._lock:
            if self._requested is not None:
                body.update(reload=dict(self._requested), reload_ns=self._requested_ns)
        path = self._worker_file()
        self._announced, self._announced_error = time.monotonic(), error
        try:
            self.workers_dir.mkdir(exist_ok=True)
            tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, path)
        except OSError as exc:  # the reloading worker then does not wait for this one
            log.warning("could not record what this worker serves", extra={"reason": str(exc)})

    def _announce_now_and_then(self, max_age: float = ANNOUNCE_REFRESH_SECONDS) -> None:
        """Rewrite this worker's record when it is ``max_age`` old (the poller's, each poll)."""
        if time.monotonic() - self._announced >= max_age:
            self._announce(self._announced_error)

    def _load(self, target: Path) -> tuple[LoadedBundle | None, str | None]:
        """Load and swap in ``target``: the bundle, or None and why not (the status must not stay
        "loading" whatever the load raised)."""
        try:
            return self.holder.load(target), None
        except BundleError as exc:
            return None, describe_error(exc, 500)
        except Exception as exc:
            log.exception("reload failed unexpectedly")
            return None, f"unexpected error: {type(exc).__name__}"

    def _load_and_write_marker(self, target: Path) -> tuple[str, str | None]:
        bundle, error = self._load(target)
        if bundle is None:
            return "failed", error
        try:
            self._write_marker(target, bundle.version)
        except OSError as exc:
            return "partial", f"loaded here, but other workers were not told: {exc}"
        self._announce()
        return "loaded", None

    def _finish(self, status: dict[str, Any], done: threading.Event, state: str, error: str | None) -> None:
        """Record the outcome of the load that ``status`` describes and wake its waiters.

        Each load has its own status and event: a marker load finishing after an admin reload
        was requested neither marks that reload "loaded" nor wakes its waiters (they would answer
        200 for a bundle not loaded), and a waiter woken by its own load's end answers for it
        even when another load has started since.
        """
        with self._lock:
            status.update(state=state, error=error, finished_at=_iso(time.time()))
            asked = status is self._requested
        if asked:  # before its waiters wake: the load is over only once the others can tell
            self._announce(self._announced_error)
        if state == "failed":  # before the waiters wake too: their 422 comes after the alert's line
            self._log_refused(status.get("target"), error)
        done.set()

    def _log_refused(self, target: Any, reason: str | None) -> None:
        """The one ERROR of a refused reload, saying what serves now: a worker that serves no model
        (it refused the bundle it started with) logged that "the previous bundle keeps serving"."""
        if self.holder.bundle is not None:
            message = "reload refused; the previous bundle keeps serving"
        else:
            message = "reload refused; no model is loaded: the service is not ready"
        log.error(message, extra={"target": target, "reason": reason})

    # ------------------------------------------------------------------ the marker

    def _marker_stat(self) -> tuple[int, int, int] | None:
        try:
            return _stat_key(self.marker.stat())
        except OSError:
            return None

    def _read_marker_with_stat(self) -> tuple[dict[str, Any] | None, tuple[int, int, int] | None]:
        """The marker's content and the stat of that very content (one open file, so one inode).

        A stat taken after reading could belong to a marker written in between, which would
        then count as seen without ever being read.
        """
        try:
            with self.marker.open("rb") as handle:
                stat = _stat_key(os.fstat(handle.fileno()))
                raw = handle.read()
        except OSError:
            return None, None
        try:
            data = json.loads(raw)
        except ValueError:
            return None, stat
        return (data if isinstance(data, dict) else None), stat

    def _write_marker(self, target: Path, version: str) -> None:
        """Write the marker with the next generation; the read-increment-write is one step
        across processes (an ``flock`` on ``.serving.json.lock`` beside the marker)."""
        with exclusive_lock(self.marker.with_name(f"{self.marker.name}.lock")):
            self._write_next_marker(target, version)

    def _write_next_marker(self, target: Path, version: str) -> None:
        previous = self._read_marker_with_stat()[0] or {}
        generation = _generation_of(previous) + 1
        body = {
            "generation": generation,
            "target": str(target),
            "version": version,
            "at": _iso(time.time()),
            "pid": os.getpid(),
            "configured": self.configured,
            "requested_ns": self._requested_ns,  # the admin's reload that writes it: instance_status
        }
        # a process killed between the write and the rename below left its file for ever
        remove_stale_leftovers(self.marker.parent)
        tmp = self.marker.with_name(f"{self.marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        # synced before the rename, and its name after: a crash must not empty or lose an admin's
        # choice of bundle (a rollback), which the restarted workers would no longer follow
        write_synced(tmp, json.dumps(body).encode(), mode=0o666)
        # A rename keeps mtime, inode and size: this is the stat of our marker. Stat'ing the
        # marker after the rename could pick up a sibling's marker written in between.
        written = _stat_key(os.stat(tmp))
        os.replace(tmp, self.marker)
        sync_directory(self.marker.parent)
        self._marker_seen = written
        self._generation = generation

    def check_marker(self) -> bool:
        """One poll: load the marker's bundle if the marker changed and names another bundle.

        The stat comparison needs no lock. When the marker changed, the rest runs under the
        load lock and reads the marker again there: a reload of this worker may have written
        a newer marker meanwhile. While a load runs in this process the poll is skipped, not
        queued behind it (a request thread calls this too, and must not wait seconds); the
        marker stays unseen, so the next poll looks again.
        """
        stat = self._marker_stat()
        if stat is None or stat == self._marker_seen:
            return False
        if not self._load_lock.acquire(blocking=False):
            return False
        try:
            return self._follow_marker()
        finally:
            self._load_lock.release()

    def _follow_marker(self) -> bool:
        """Load what the marker names (the load lock is held); each marker write is tried once.

        The stat is recorded as seen before the load, so a bundle that fails to load is not
        retried at every poll, only when the marker changes again.
        """
        marker, stat = self._read_marker_with_stat()
        if stat is None or stat == self._marker_seen:
            return False
        if marker is None or "target" not in marker or self._written_for_another_path(marker):
            self._marker_seen = stat
            return False
        target = Path(marker["target"])
        current = self.holder.bundle
        if current is not None and current.path.resolve() == target.resolve():
            self._marker_seen, self._generation = stat, _generation_of(marker)
            self._announce()
            return False
        with self._lock:
            if self._loading is not None and self._loading.is_alive():
                # A reload requested here is about to load: it writes the marker when it
                # succeeds, and when it fails the next poll finds this marker still unseen.
                return False
            self._marker_seen = stat
            status, done = self._new_load(target.name, marker.get("at"), via="marker")
            self._status, self._done = status, done
            self._status_ns = _requested_ns_of(marker)
        log.info("reload marker changed; loading", extra={"target": target.name})
        bundle, error = self._load(target)
        self._generation = _generation_of(marker)
        self._announce(error)
        self._finish(status, done, "failed" if bundle is None else "loaded", error)
        return bundle is not None

    # ------------------------------------------------------------------ the poller

    def ensure_polling(self) -> None:
        """Start this process's poller if it is not running (a pid comparison; called on every request)."""
        if self._poller_pid == os.getpid():
            return
        with self._lock:
            if self._poller_pid == os.getpid():
                return
            self._poller_pid = os.getpid()
            # The thread holds the reloader weakly: an app that is dropped (tests) ends its poller.
            threading.Thread(
                target=_poll, args=(weakref.ref(self), self._stop, self.poll_interval),
                name="movierec-reload-poller", daemon=True,
            ).start()  # fmt: skip
            at_exit(forget_workers_at_exit)  # idempotent; registered once per process
        # A worker forked from the uwsgi master after a reload inherited the master's (older)
        # bundle: catch up now, before its first answer, instead of at the first poll.
        try:
            self.check_marker()
        except Exception:  # serving goes on with the inherited bundle
            log.exception("reload marker check failed")
        self._announce()

    def stop(self) -> None:
        """End the poller and remove this worker's record, for good (nothing writes it again)."""
        with self._record_lock:
            self._stop.set()
            self._worker_file().unlink(missing_ok=True)


def forget_workers_at_exit() -> None:
    """Stop this process's polling workers and remove their records (a graceful stop: uwsgi's
    exit hook). The records were only removed, and the pollers, running until the process ended,
    wrote them again."""
    for reloader in list(_LIVE):
        if reloader._poller_pid == os.getpid():
            reloader.stop()


def model_path_key(path: Path) -> str:
    """How a marker names the model path a service was started with: absolute, symlinks
    resolved (``model`` and ``/abs/model`` are one path), except a link to a bundle
    (``model/latest``), which training moves: resolved, workers started before and after a
    move would each name another bundle, and a recycled worker would ignore its siblings'
    reload."""
    absolute = Path(os.path.abspath(path))
    if absolute.is_symlink() and (absolute / MANIFEST).is_file():
        return str(absolute.parent.resolve() / absolute.name)
    return str(absolute.resolve())


def _instance() -> int:
    """The server this process serves in: under uwsgi its master's pid (shared by the workers it
    starts and recycles), else this process's own."""
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return os.getpid()
    return int(uwsgi.masterpid()) or os.getpid()  # pragma: no cover - only inside uwsgi


def _identity(record: dict[str, Any], field: str) -> str | None:
    """A record's start time of its worker (``started``) or master (``instance_started``), as
    :func:`process_identity` gave it; None when it has none (written where ``/proc`` cannot tell,
    or by an earlier release): its pid alone then names the process."""
    value = record.get(field)
    return value if isinstance(value, str) else None


def _requested_ns_of(marker: dict[str, Any]) -> int:
    """When the admin's reload that wrote ``marker`` was asked for (time.time_ns()), -1 unknown."""
    requested_ns = marker.get("requested_ns")
    return requested_ns if type(requested_ns) is int else -1


def _generation_of(marker: dict[str, Any]) -> int:
    try:
        return int(marker.get("generation", 0))
    except (TypeError, ValueError):
        return 0


def _same(path: Any, target: Path) -> bool:
    """Whether a worker's recorded bundle path is ``target`` (links resolved)."""
    return isinstance(path, str) and Path(path).resolve() == target.resolve()


def _stat_key(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)


def _poll(ref: weakref.ref[ModelReloader], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        reloader = ref()
        if reloader is None:
            return
        try:
            reloader.check_marker()
            reloader._announce_now_and_then()
        except Exception:
            log.exception("reload poller error")
        del reloader
