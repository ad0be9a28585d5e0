"""Constants and small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

PG_ADMIN_URL = os.environ.get("MOVIEREC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
SESSION_PASSWORD = "correct horse battery staple"
ADMIN_PASSWORD = "admin-password-for-tests"
JWT_SECRET = "x" * 48

PROFILE = {"age": 30, "gender": "M", "occupation": "programmer"}
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def migrate(database: Any, revision: str, *, down: bool = False) -> None:
    """Run this code's migrations on ``database`` (an app.storage.db.Database) up (or down) to
    ``revision``: the schema an older release left (the service only ever goes to head)."""
    from alembic import command
    from alembic.config import Config

    from app.storage.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlalchemy_url(url: str) -> str:
    """A ``postgresql://`` URL (the test fixtures' form) with SQLAlchemy's psycopg 3 driver named."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def database_down(app: Any) -> Iterator[None]:
    """The app's database unreachable (its engine pointed at a port where nothing listens) for the
    block, the real one back after it; the machine's PostgreSQL keeps running."""
    with database_unreachable(app.extensions["movierec"].db):
        yield


@contextmanager
def database_unreachable(db: Any) -> Iterator[None]:
    """:func:`database_down` for an app.storage.db.Database of its own."""
    from sqlalchemy.orm import sessionmaker

    from app.storage.db import make_engine

    good_engine, good_sessions = db.engine, db.sessions
    db.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    db.sessions = sessionmaker(db.engine, expire_on_commit=False)
    try:
        yield
    finally:
        db.engine, db.sessions = good_engine, good_sessions


def watch_reads(db: Any) -> list[str]:
    """The statements ``db`` runs from now on that read for a request: neither the request log's
    rows written behind every answer nor a worker's refresh of its revocation list, whatever is asked."""
    from sqlalchemy import event

    reads: list[str] = []

    def watch(_connection: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not statement.lstrip().upper().startswith("INSERT") and "revoked_tokens" not in statement:
            reads.append(statement)

    event.listen(db.engine, "before_cursor_execute", watch)
    return reads


def answered_after_flush(call: Callable[[], Any], issuer: Any, hold: float = 0.3) -> tuple[Any, float]:
    """``call()`` (another worker's request for a row ``issuer``'s request log still holds) runs in
    a thread that must still be waiting ``hold`` s later; then ``issuer`` flushes its log. Returns
    what ``call`` answered and how long it waited."""
    result: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        result["answer"] = call()
        result["waited"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(hold)
    assert thread.is_alive(), "the other worker must wait for the pending row, not answer at once"
    issuer.extensions["movierec"].recommendations.request_log.flush()
    thread.join(60)  # it answers at once after the flush; the bound is for when it never does
    assert "answer" in result, "the other worker did not answer within 60 s of the flush"
    return result["answer"], result["waited"]


def login(client: Any, password: str = SESSION_PASSWORD) -> dict[str, str]:
    """Log in through the API and return the Authorization header for the token."""
    response = client.post("/api/login", json={"session_password": password})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def frame_running(frame: Any, code: Any) -> Any:
    """The frame of ``code`` in the stack ending at ``frame`` (a thread's current frame from
    ``sys._current_frames()``), or None: where a thread is blocked, for tests that wait until it is."""
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame


def journal_records(app: Any) -> list[Any]:
    """The scores in the app's feedback journal files (what a 200 promises is on disk)."""
    from app.services.feedback_journal import SUFFIX, read_records

    directory = app.extensions["movierec"].recommendations.feedback.directory
    paths = sorted(directory.glob(f"*{SUFFIX}"))
    return [record for path in paths for record in read_records(path.read_bytes())]


def stored_feedback(app: Any) -> list[Any]:
    """The feedback rows, once every score the app acknowledged has left its journal for the database."""
    services = app.extensions["movierec"]
    services.recommendations.feedback.drain()
    return services.db.feedback_rows()


def in_forked_child(body: Callable[[], bool], timeout: float = 30.0) -> int:
    """Run ``body`` in a forked child; its exit code: 0 when it returned True, 1 when False, 2 when
    it raised, and -1 when it was still running after ``timeout`` (a hang: killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 2
        try:
            code = 0 if body() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


@contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread for the duration (a fork inside copies it held)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def record_calls(monkeypatch: Any, owner: Any, name: str) -> list[tuple[Any, ...]]:
    """The positional arguments of each call of ``owner.<name>`` from now on, in order; the call
    still runs (keyword arguments reach it too)."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def fail_for_path(monkeypatch: Any, method: str, path: Path, error: BaseException) -> None:
    """Make ``Path.<method>`` raise ``error`` for ``path`` alone from now on; every other path
    gets the real method. Tests run as root, where chmod denies nothing: the call itself fails."""
    real = getattr(Path, method)

    def failing(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, failing)


def record_fsyncs(monkeypatch: Any) -> list[str]:
    """The paths ``os.fsync`` is called on from now on, in order (a file, or a directory for a rename)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def record_fsyncs_and_renames(monkeypatch: Any) -> list[tuple[str, ...]]:
    """What ``os.fsync`` (``("fsync", path)``) and ``os.replace``/``os.rename`` (``("rename", src,
    dst)``) do from now on, in order: whether a file was synced before the rename that publishes it."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def renamer(real: Any) -> Any:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real(src, dst, *args, **kwargs)
            events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    return events


def flow_settings(tmp_path: Any, seeds: str = "0") -> Any:
    """Settings of a training flow on synthetic GroupLens files: an empty model store, its own
    registry and SQLite database under ``tmp_path``, one quick candidate, no service to reload."""
    from app.config import Settings
    from tests.synthetic import write_grouplens

    store = tmp_path / "model"
    return Settings(
        testing=True, session_password=SESSION_PASSWORD, admin_password=ADMIN_PASSWORD,
        jwt_secret=JWT_SECRET, data_dir=write_grouplens(tmp_path / "data"), model_path=store,
        model_dir=store, var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'service.db'}",
        pipeline_candidates="most_liked", pipeline_seeds=seeds, service_url="",
    )  # fmt: skip


STOP_MARGIN_SECONDS = 10
"""What a container's stop timeout must leave after uwsgi's ``worker-reload-mercy``: the master's
own exit once its workers are gone (the HTTP router, its exit hooks), and slack."""


def uwsgi_stop_seconds(ini: Path | None = None) -> tuple[int, int]:
    """uwsgi.ini's default ``harakiri`` (the longest a request may run) and its
    ``worker-reload-mercy`` (how long the master lets a stopping worker live before SIGKILL),
    read from the file (``harakiri`` is set in an ``if-env`` block: its number is the default; the
    mercy is ``%(harakiri + N)``, uwsgi's placeholder math)."""
    text = (ini or Path(__file__).resolve().parents[1] / "uwsgi.ini").read_text()
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith((";", "#")):
            values.setdefault(key.strip(), []).append(value.strip())
    (harakiri,) = [int(v) for v in values["harakiri"] if v.isdigit()]
    (mercy_value,) = values["worker-reload-mercy"]
    derived = re.fullmatch(r"%\(harakiri \+ (\d+)\)", mercy_value)  # uwsgi's placeholder math
    mercy = harakiri + int(derived.group(1)) if derived else int(mercy_value)
    return harakiri, mercy


def register_bundle(registry: Any, store: Path, candidate: str = "most_liked") -> Any:
    """Register the bundle ``store/latest`` names as a new version of ``registry`` (its
    ``bundle_version`` tag that bundle's name), as a pipeline run does; its VersionInfo."""
    parent = registry.start_pipeline_run({"data_hash": "d"})
    run = registry.start_candidate_run(parent, candidate, {})
    bundle = (store / "latest").resolve()
    registry.upload_candidate_artifacts(run, bundle, [], registry.artifact_uri(run))
    return registry.register(run, {"bundle_version": bundle.name, "candidate": candidate})


@contextmanager
def bench_script(file_name: str, module_name: str) -> Iterator[ModuleType]:
    """``bench/<file_name>`` loaded as module ``module_name`` (the scripts are not a package), in
    ``sys.modules`` while it is used: a dataclass looks its module up while it is built."""
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / file_name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)


@contextmanager
def hang_up_at_default_in_children() -> Iterator[None]:
    """Children started inside get SIGHUP at its default, as in a terminal, also when this test
    run ignores it (``nohup``): an ignored signal stays ignored across ``exec``, a caught one is
    reset to its default. For a test of what a hang-up does; main thread only."""
    previous = signal.signal(signal.SIGHUP, lambda _signum, _frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@contextmanager
def spilling_process(directory: Path, ids: list[str]) -> Iterator[Path]:
    """A live process that kept rows ``ids`` on disk in ``directory`` (RowSpill.save, as a worker
    does during an outage) and runs until the block ends; yields that file. It is reaped at the
    end: its pid is then free (an ended worker's)."""
    script = (
        "import sys; from pathlib import Path; from app.services.request_log import RowSpill\n"
        f"print(RowSpill(Path({str(directory)!r})).save([{{'id': i}} for i in {ids!r}]), flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield Path(process.stdout.readline().strip())
    finally:
        process.stdin.close()
        process.wait(30)
