"""Helpers for the reliability tier: a real uwsgi server, a private Redis, a bounded load client.

Everything listens on 127.0.0.1 with a free port; every process started here is stopped by
the caller's ``finally``/fixture. Secrets reach the server through its environment only
(never its argument list), which tests/integration/test_reliability_secrets.py checks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, PROFILE, SESSION_PASSWORD, free_port

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
PG_CTL = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main"]
START_SECONDS = 60.0
"""How long a helper waits for something that will happen (a server answering, scores shipped):
a bound for when it never does, not a speed the test asserts; a loaded CI machine only takes longer."""


@dataclass
class Server:
    """One uwsgi instance of the app (master + workers) and its captured output."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The master's live children (the workers), from /proc."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return sorted(pids)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uwsgi.ini: graceful stop, exit hooks flush
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def server_environment(
    tmp: Path, model_store: Path, data_dir: Path, database_url: str, redis_url: str | None, **extra: str
) -> dict[str, str]:
    env = {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "SESSION_PASSWORD": SESSION_PASSWORD,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MOVIEREC_JWT_SECRET": JWT_SECRET,
        "ML_MODEL_PATH": str(model_store),
        "MOVIEREC_MODEL_DIR": str(model_store),
        "MOVIEREC_DATA_DIR": str(data_dir),
        "MOVIEREC_DATABASE_URL": database_url,
        "MOVIEREC_FEEDBACK_JOURNAL_DIR": str(tmp / "feedback-journal"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
        "UWSGI_PROCESSES": "2",
        "UWSGI_THREADS": "4",
        "MOVIEREC_LOGIN_RATE_LIMIT": "100000 per minute",
    }
    if redis_url:
        env["MOVIEREC_REDIS_URL"] = redis_url
    env.update(extra)
    return env


def start_server(tmp: Path, env: dict[str, str], *, port: int | None = None, timeout: float = 90) -> Server:
    """Start the production server the way the image does (scripts/start-uwsgi.sh + uwsgi.ini)."""
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"uwsgi-{port}.log"
    script = ROOT / "scripts" / "start-uwsgi.sh"
    if script.exists():
        command = ["/bin/sh", str(script)]
    else:  # the documented fallback: the same options as an argument list
        command = [
            str(VENV_BIN / "uwsgi"),
            "--http",
            f"127.0.0.1:{port}",
            "--http-keepalive",
            "--module",
            "app.wsgi:application",
        ]
        command += [
            "--master",
            "--processes",
            "2",
            "--threads",
            "4",
            "--need-app",
            "--die-on-term",
            "--lazy-apps",
        ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, "MOVIEREC_PORT": str(port), "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(port, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uwsgi exited with {process.returncode}:\n{server.output()[-3000:]}")
        try:
            if (
                requests.get(f"{server.url}/health/live", timeout=1).status_code == 200
                and len(server.worker_pids()) >= 2
            ):
                wait_ready(server, deadline - time.monotonic())
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"uwsgi did not become ready in {timeout}s:\n{server.output()[-3000:]}")


def wait_ready(server: Server, timeout: float) -> None:
    """Every worker answers (lazy-apps loads the app per worker): a few live probes in a row."""
    deadline = time.monotonic() + max(timeout, 1)
    ok = 0
    while time.monotonic() < deadline and ok < 8:
        try:
            ok = ok + 1 if requests.get(f"{server.url}/health/live", timeout=2).status_code == 200 else 0
        except requests.RequestException:
            ok = 0
        time.sleep(0.05)


@contextmanager
def private_redis(tmp: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throw-away redis-server on its own port (the machine's Redis is never touched); ``port``:
    that one, to bring back a Redis a test killed (empty: it keeps nothing on disk)."""
    binary = shutil.which("redis-server")
    if binary is None:
        import pytest

        pytest.skip("redis-server is not installed")
    port = port or free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(tmp)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"redis-server on port {port} did not answer within {START_SECONDS} s"
                        f" (exit status {process.poll()})"
                    ) from None
                time.sleep(0.05)
        client.close()
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def login(
    base_url: str, session: requests.Session | None = None, password: str = SESSION_PASSWORD
) -> dict[str, str]:
    """The Authorization header of a token from ``base_url`` (ADMIN_PASSWORD: an admin's)."""
    http = session or requests
    response = http.post(f"{base_url}/api/login", json={"session_password": password}, timeout=10)
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@dataclass
class LoadFigures:
    """What a load run did, counted on the client side."""

    sent: int = 0
    acknowledged: int = 0  # score posts answered 200
    failed: int = 0  # transport errors and 5xx other than a deliberate 503
    unavailable: int = 0  # 503 (database down): honest refusals
    recommendations: int = 0
    recommend_failed: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    acked: dict[tuple[str, str], float] = field(default_factory=dict)  # (id, title) -> last acked score
    lock: threading.Lock = field(default_factory=threading.Lock)

    def line(self) -> str:
        return (
            f"sent={self.sent} acknowledged={self.acknowledged} unique_acknowledged={len(self.acked)} "
            f"failed={self.failed} unavailable_503={self.unavailable} recommendations={self.recommendations} "
            f"recommend_failed={self.recommend_failed} statuses={dict(sorted(self.statuses.items()))}"
        )


def score_load(
    base_url: str | Callable[[int], str],
    *,
    scores: int,
    clients: int,
    duplicate_every: int = 10,
    retries: int = 3,
    deadline: float = 240,
    figures: LoadFigures | None = None,
    stop: threading.Event | None = None,
) -> LoadFigures:
    """``clients`` threads each: recommend → score every title (retrying failures with the same
    (id, movie)), re-sending every ``duplicate_every``-th score, until ``scores`` posts are sent."""
    figures = figures or LoadFigures()
    budget = threading.Semaphore(scores)
    end = time.monotonic() + deadline
    url_of = base_url if callable(base_url) else (lambda _i: base_url)

    def worker(index: int) -> None:
        session = requests.Session()
        base = url_of(index)
        for attempt in range(5):  # a worker being recycled or killed may drop the first try
            try:
                headers = login(base, session)
                break
            except requests.RequestException:
                time.sleep(0.5 * (attempt + 1))
        else:
            return
        n = 0
        while time.monotonic() < end and not (stop and stop.is_set()):
            try:
                rec = session.post(f"{base}/api/recommend", json=PROFILE, headers=headers, timeout=15)
            except requests.RequestException:
                with figures.lock:
                    figures.recommend_failed += 1
                continue
            if rec.status_code != 200:
                with figures.lock:
                    figures.recommend_failed += 1
                    figures.statuses[rec.status_code] += 1
                time.sleep(0.05)
                continue
            with figures.lock:
                figures.recommendations += 1
            body = rec.json()
            for title in body["recommendations"]:
                n += 1
                score = ((n + index) % 9 + 1) / 2
                sends = 2 if n % duplicate_every == 0 else 1  # a deliberate retry of an acknowledged post
                for _ in range(sends):
                    if not budget.acquire(blocking=False):
                        return
                    _post_score(session, base, headers, body["id"], title, score, retries, figures)
        session.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=deadline + 30)
    return figures


def _post_score(
    session: requests.Session,
    base: str,
    headers: dict[str, str],
    request_id: str,
    title: str,
    score: float,
    retries: int,
    figures: LoadFigures,
) -> None:
    for attempt in range(retries + 1):
        with figures.lock:
            figures.sent += 1
        try:
            response = session.post(
                f"{base}/api/recommend/score",
                json={"id": request_id, "movie": title, "score": score},
                headers=headers,
                timeout=15,
            )
        except requests.RequestException:
            with figures.lock:
                figures.failed += 1
            time.sleep(0.05 * (attempt + 1))
            continue
        with figures.lock:
            figures.statuses[response.status_code] += 1
            if response.status_code == 200:
                figures.acknowledged += 1
                figures.acked[(request_id, title)] = score
                return
            if response.status_code == 503:
                figures.unavailable += 1
            else:
                figures.failed += 1
        time.sleep(0.1 * (attempt + 1))


def stored_feedback(database_url: str) -> tuple[int, dict[tuple[str, str], float]]:
    """(row count, {(request_id, title): score}) read straight from PostgreSQL."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT request_id, title, score FROM feedback").fetchall()
    return len(rows), {(r[0], r[1]): float(r[2]) for r in rows}


def shipped_feedback(
    database_url: str, expected: dict[tuple[str, str], float], timeout: float = START_SECONDS
) -> tuple[int, dict[tuple[str, str], float]]:
    """:func:`stored_feedback` once it holds ``expected``, or at ``timeout``: a running server
    ships acknowledged scores from its journal to the database ~0.1 s after their 200 (longer on a
    loaded machine: the timeout is only for when they never come)."""
    deadline = time.monotonic() + timeout
    while True:
        rows, stored = stored_feedback(database_url)
        if stored == expected or time.monotonic() >= deadline:
            return rows, stored
        time.sleep(0.05)


def pg_cluster(action: str) -> None:
    """Stop/start the machine's PostgreSQL cluster (root only; callers restart it in a finally)."""
    command = [*PG_CTL, action] + (["-m", "fast"] if action == "stop" else [])
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def pg_is_up(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def as_dict(figures: LoadFigures) -> dict[str, Any]:
    return {k: v for k, v in figures.__dict__.items() if k not in {"acked", "lock"}}


@dataclass
class Relay:
    """A TCP relay started by :func:`tcp_relay`: its port, and :meth:`cut` to make it go away."""

    port: int
    listener: socket.socket
    sockets: list[socket.socket] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def cut(self) -> None:
        """The peer gone: the port refuses connections and every open one is reset."""
        self.stop.set()
        with suppress(OSError):  # wakes the accept() in progress: close() alone leaves it listening
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in list(self.sockets):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextmanager
def tcp_relay(
    target: tuple[str, int], silent: threading.Event | None = None, port: int = 0
) -> Iterator[Relay]:
    """A TCP relay on loopback ``port`` (0: a free one) to ``target``, so a test can take a server
    away (:meth:`Relay.cut`) or hang it without touching it.

    While ``silent`` is set the relay holds what either side sends and connects new clients to
    nothing: a server that hangs (stopped, stuck) with its host still up. The kernel keeps
    acknowledging, so no TCP timeout or keepalive notices anything.
    """
    listener = socket.create_server(("127.0.0.1", port))
    relay = Relay(listener.getsockname()[1], listener)

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                while silent is not None and silent.is_set() and not relay.stop.is_set():
                    time.sleep(0.05)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not relay.stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            relay.sockets.append(client)
            if relay.stop.is_set():
                client.close()
                return
            if silent is not None and silent.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(target)
            relay.sockets.append(upstream)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield relay
    finally:
        relay.stop.set()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
