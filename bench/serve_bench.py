"""Serving benchmark: the API under uwsgi, measured against its own authenticated floor in one run.

What it does (loopback only, bounded in time):

1. starts the service as production does (scripts/start-uwsgi.sh, the repository's
   ``uwsgi.ini``), bound to 127.0.0.1 on a free port (``MOVIEREC_HOST``, ``MOVIEREC_PORT``), on
   a trained bundle and a fresh PostgreSQL database (``--database sqlite`` for SQLite), secrets
   passed through the environment;
2. measures with ``wrk`` (Debian package) ``POST /api/echo`` — token check, JSON body parsed and
   validated, echoed: the floor every authenticated call pays — against ``POST /api/recommend``
   (same body), then against ``POST /api/recommend/score`` over unique (id, movie) pairs issued
   beforehand, counting acknowledged scores. Each comparison is ``--rounds`` short rounds of
   echo and the endpoint back to back, in ABBA order; a ratio is taken within each round and
   the target is judged on their median. On a shared VM the speed of the machine drifts by
   ±20 % from one 8-second run to the next (docs/performance.md), more than the differences
   measured; adjacent short runs see the same machine. Each run also records the server's CPU
   per request (uwsgi workers, HTTP router, the run's PostgreSQL backends): where an
   endpoint's cost goes, and what its throughput ratio would be if the cores were the limit;
3. times the seed's path in-process, the seed's random forest scoring one profile over the
   catalogue, against ours over HTTP at one connection, in rounds like the endpoints (a ratio
   per round), and against our lookup in-process;
4. times ``/api/predict/batch`` with 1,000 records against scikit-learn's ``predict`` on the
   same features (the same encoder, scikit-learn's LinearRegression carrying our weights), in
   rounds like the endpoints, a ratio per round;
5. reads every worker's memory (RSS and PSS), stops uwsgi gracefully, and counts rows:
   every acknowledged score and every acknowledged recommendation must be in the database.

Prints a table of figures and ratios against the targets of issue 5 and writes JSON
(``--out``). Exit status 1 when a durability check fails or a measured request failed (a
non-2xx answer or a socket error: such a run meets no target); ``--strict`` also fails on a
missed performance target.
"""

from __future__ import annotations

import argparse
import decimal
import functools
import http.client
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROFILE = {"age": 30, "gender": "M", "occupation": "programmer"}

_SETUP_LUA = """
function setup(thread) table.insert(threads, thread) end
"""

_DONE_LUA = """
function done(summary, latency, requests)
  local ok, bad, spent = 0, 0, 0
  for _, t in ipairs(threads) do
    ok = ok + (t:get("ok") or 0); bad = bad + (t:get("bad") or 0); spent = spent + (t:get("spent") or 0)
  end
  io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"non2xx\\": %d, "
    .. "\\"socket_errors\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"mean_us\\": %.1f, "
    .. "\\"ok\\": %d, \\"bad\\": %d, \\"spent\\": %d}\\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, ok, bad, spent))
end
"""

_POST_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.body = '%(body)s'
"""

_SCORE_LUA = """
local pairs_file = "%(pairs)s"
local counter = 0
local thread_id = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  ok = 0; bad = 0; spent = 0
  items = {}
  local n = 0
  for line in io.lines(pairs_file) do
    n = n + 1
    if (n - 1) %% %(threads)d == tid then table.insert(items, line) end
  end
  index = 0
end
function request()
  index = index + 1
  if index > #items then
    -- out of pairs before the run's end: the thread stops (its last pair may go twice), and
    -- wrk still divides by the whole run, so the round's rate is not the endpoint's
    spent = 1
    wrk.thread:stop()
    index = #items
  end
  return wrk.format("POST", "/api/recommend/score",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %(token)s"}, items[index])
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end
"""


STORED = "every acknowledged score stored"
LOGGED = "every acknowledged recommendation logged"
ANSWERED = "every measured request answered 2xx"
SEED_FOREST = ">= 10x faster per request than the seed forest's scoring"
PREDICT_BATCH = "/api/predict/batch (1,000) within 2x of scikit-learn predict"
# checks that fail the run whatever --strict says: lost data, or a run that did not measure the API
ALWAYS_JUDGED = frozenset({STORED, LOGGED, ANSWERED})


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append((name, passed, detail))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """uwsgi with the app, started and stopped like production (start script, SIGTERM)."""

    def __init__(
        self, model_path: Path, database_url: str, workdir: Path, data_dir: Path, redis_url: str | None = None
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = secrets.token_urlsafe(16)
        self.env = {
            **os.environ,
            "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
            "SESSION_PASSWORD": self.password,
            "ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "MOVIEREC_JWT_SECRET": secrets.token_urlsafe(48),
            "ML_MODEL_PATH": str(model_path),
            "MOVIEREC_MODEL_DIR": str(model_path),
            "MOVIEREC_DATA_DIR": str(data_dir),
            "MOVIEREC_DATABASE_URL": database_url,
            "MOVIEREC_FEEDBACK_JOURNAL_DIR": str(workdir / "feedback-journal"),
            # not production's INFO: without the access line per request, as every machine in
            # docs/performance.md was measured; what INFO costs is measured there ("Twenty-first
            # machine")
            "MOVIEREC_LOG_LEVEL": "WARNING",
            # a breaker state of its own: one left open in Redis by an earlier run's scores would
            # route this run's recommendations to the fallback
            "MOVIEREC_BREAKER_NAME": f"bench-{secrets.token_hex(6)}",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
            "MOVIEREC_HOST": "127.0.0.1",
            "MOVIEREC_PORT": str(self.port),
        }
        if redis_url:
            self.env["MOVIEREC_REDIS_URL"] = redis_url
        self.log = (workdir / "uwsgi.log").open("wb")
        self.process = subprocess.Popen(
            [str(ROOT / "scripts" / "start-uwsgi.sh")], cwd=ROOT, env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uwsgi exited with {self.process.returncode}; see {self.log.name}")
            try:
                status, _ = self.request("GET", "/health/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("uwsgi did not become ready in time")

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            return send(connection, method, path, body, token)
        finally:
            connection.close()

    def login(self) -> str:
        status, body = self.request("POST", "/api/login", {"session_password": self.password})
        if status != 200:
            raise RuntimeError(f"login failed: {status} {body}")
        return str(body["access_token"])

    def workers(self, kind: str = "worker") -> list[int]:
        """Pids of uwsgi's ``kind`` processes ("worker", or "http" for the HTTP router): children of
        the master (the start script's exec), told apart by their process names (auto-procname)."""
        master = self.process.pid
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                name = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == master and f"uWSGI {kind} " in name:
                children.append(int(entry.name))
        return sorted(children)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful in uwsgi.ini): workers finish, run their exit hooks (request-log flush), exit."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self.log.close()


def send(
    connection: http.client.HTTPConnection, method: str, path: str, body: Any, token: str | None
) -> tuple[int, Any]:
    """One request on a keep-alive connection, JSON in and out (see :func:`send_bytes`)."""
    payload = json.dumps(body).encode() if body is not None else None
    status, data = send_bytes(connection, method, path, payload, token)
    return status, json.loads(data) if data else None


def send_bytes(
    connection: http.client.HTTPConnection, method: str, path: str, payload: bytes | None, token: str | None
) -> tuple[int, bytes]:
    """One request with a ready body; reconnects once when a recycled worker closed the connection."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in (1, 2):
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            connection.close()  # nothing was acknowledged on this attempt; http.client reconnects
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def checked_post(
    connection: http.client.HTTPConnection, path: str, payload: bytes, token: str
) -> Callable[[], bytes]:
    """A timed request: ``POST path`` with a ready body, and a run that stops on any answer but a
    200 (a 429 or a 500 answered fast would be timed as a fast request)."""

    def call() -> bytes:
        status, data = send_bytes(connection, "POST", path, payload, token)
        if status != 200:
            raise RuntimeError(f"{path} answered {status} while timed: {data[:300]!r}")
        return data

    return call


def pg_problem(admin_url: str) -> str | None:
    """Why PostgreSQL at ``admin_url`` cannot be used (psycopg's first line: no password), or None."""
    import psycopg

    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5):
            return None
    except psycopg.Error as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def create_pg_database(admin_url: str) -> tuple[str, str]:
    """A fresh PostgreSQL database for one run (the production store in docker-compose)."""
    import psycopg

    name = f"movierec_bench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name, f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS (proportional: shared pages split between the processes sharing them), KiB."""
    values = {}
    for name, path in (("rss", f"/proc/{pid}/status"), ("pss", f"/proc/{pid}/smaps_rollup")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        key = "VmRSS" if name == "rss" else "Pss"
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            values[name] = int(match.group(1))
    return values


def cpu_ns(pid: int) -> int:
    """CPU time a process has run so far, all its threads (``/proc/<pid>/task/*/schedstat``), ns.

    Scheduler run time, exact to the nanosecond, unlike the tick-sampled ``utime``/``stime``; 0 for
    a process that is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


class CpuMeter:
    """Server-side CPU per request of a wrk run: uwsgi workers, HTTP router and the database.

    Each measured run records it, split by process, to tell where an endpoint's cost goes and
    whether the cores limit it (then its throughput ratio to echo matches the CPU ratio). The
    database's share is its backends serving this run's database (PostgreSQL; none with
    SQLite). wrk and Redis are not counted.
    """

    def __init__(self, server: Server, database_url: str | None) -> None:
        self.server = server
        self.database_url = database_url

    def groups(self) -> dict[str, list[int]]:
        groups = {"workers": self.server.workers(), "router": self.server.workers("http"), "database": []}
        if self.database_url is not None:
            import psycopg

            with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as connection:
                rows = connection.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).fetchall()
            groups["database"] = [int(row[0]) for row in rows]
        return groups

    def measure(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``run()`` (one wrk run), with ``cpu_us``: each group's CPU per completed request, µs."""
        before_groups = self.groups()
        before = {pid: cpu_ns(pid) for pids in before_groups.values() for pid in pids}
        result = run()
        after_groups = self.groups()
        result["cpu_us"] = {}
        for name in before_groups:
            # a backend opened during the run counts whole
            pids = set(before_groups[name]) | set(after_groups[name])
            used = sum(max(0, cpu_ns(pid) - before.get(pid, 0)) for pid in pids)
            result["cpu_us"][name] = used / 1e3 / max(1, result["requests"])
        return result


def wrk_seconds(seconds: float) -> int:
    """How long a wrk run of ``seconds`` lasts: wrk takes whole seconds, at least one."""
    return max(1, round(seconds))


def wrk(
    port: int, path: str, script: str, seconds: float, threads: int, connections: int, workdir: Path
) -> dict[str, Any]:
    lua = workdir / f"wrk-{time.monotonic_ns()}.lua"
    setup = "" if "function setup" in script else _SETUP_LUA
    lua.write_text("threads = {}\n" + setup + script + _DONE_LUA)
    duration = f"-d{wrk_seconds(seconds)}s"
    command = ["wrk", f"-t{threads}", f"-c{connections}", duration, "--timeout", "10s", "-s", str(lua),
               f"http://127.0.0.1:{port}{path}"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((line for line in done.stdout.splitlines() if line.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        # wrk's own words ("unable to connect to 127.0.0.1:8123 Connection refused": the server is
        # gone), not a CalledProcessError or StopIteration that hid them
        said = " ".join((done.stderr + done.stdout).split())[-500:] or "nothing"
        raise RuntimeError(f"wrk on {path} failed (exit status {done.returncode}); it said: {said}")
    result = json.loads(line[len("WRKJSON ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": statistics.mean(r["rps"] for r in runs),
        "p50_ms": statistics.mean(r["p50_us"] for r in runs) / 1e3,
        "p99_ms": statistics.mean(r["p99_us"] for r in runs) / 1e3,
        # answers of 4xx/5xx and requests lost to socket errors (connect, read, write, timeout)
        "failed": sum(r["non2xx"] + r["socket_errors"] for r in runs),
        "cpu_us": {name: statistics.median(r["cpu_us"][name] for r in runs) for name in runs[0]["cpu_us"]},
    }


def ratios(runs: list[dict[str, Any]], echo_runs: list[dict[str, Any]], key: str) -> list[float]:
    """``key`` of each run over the echo run of the same round (adjacent in time)."""
    return [run[key] / echo[key] for run, echo in zip(runs, echo_runs, strict=True)]


def cpu_ratios(runs: list[dict[str, Any]], echo_runs: list[dict[str, Any]]) -> list[float]:
    """Echo's server CPU per request over the endpoint's, per round: its throughput ratio if CPU-bound."""
    return [
        sum(echo["cpu_us"].values()) / max(1e-9, sum(run["cpu_us"].values()))
        for run, echo in zip(runs, echo_runs, strict=True)
    ]


def score_ids_needed(echo_rps: float, seconds: float, rounds: int, pairs_per_id: int = 100) -> int:
    """Ids to issue (``pairs_per_id`` pairs each) so that no score round runs out of pairs: each
    round's share covers a run at 1.5x echo's best rate (a score costs more than an echo; the
    machine drifts). A fixed 400 ids (40,000 pairs) ran out on a machine answering echo at
    3,400 req/s, and the score target was not judged."""
    per_round = 1.5 * echo_rps * wrk_seconds(seconds)
    return max(1, math.ceil(per_round * rounds / pairs_per_id))


def post_script(token: str, body: dict[str, Any]) -> str:
    return _POST_LUA % {"token": token, "body": json.dumps(body)}


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# --------------------------------------------------------------------------- in-process parts


def seed_forest_scoring(data_dir: Path, results: Results) -> Callable[[], Any] | None:
    """The seed's path, fitted (before the server starts: the fit takes seconds of both cores):
    a 100-tree forest scoring every movie for one profile, per request. None without local data."""
    from app.recommender.data import find_local
    from app.recommender.models.forest import SeedRandomForest
    from app.recommender.segments import Segment

    data = find_local(data_dir)
    if data is None:
        return None
    started = time.perf_counter()
    forest = SeedRandomForest().fit(data.ratings, data.users, data.items)
    results.figures["seed_rf_fit_s"] = time.perf_counter() - started
    segment = Segment.of(PROFILE["age"], PROFILE["gender"], PROFILE["occupation"])
    return lambda: forest.score_segments([segment])


def lookup_in_process(model_path: Path) -> float:
    from app.recommender.bundle import load_bundle
    from app.recommender.segments import Segment

    bundle = load_bundle(model_path)
    segment = Segment.of(PROFILE["age"], PROFILE["gender"], PROFILE["occupation"])
    return median_time(lambda: [bundle.recommend_segment(segment, 10) for _ in range(100)], repeat=20) / 100


def predict_batch_sides(
    model_path: Path, records: list[dict[str, Any]], results: Results, served_version: str
) -> tuple[Callable[[], Any], Callable[[], Any]] | None:
    """Our predict_records and the same records through the encoder into scikit-learn's predict.

    ``served_version`` is the bundle the server answers with: the in-process sides load the
    store's ``latest`` minutes after the server did, and a training run in between moved it.

    Ours evaluates the fitted regression by lookups (``LinearRatingModel.folded``); scikit-learn's
    ``LinearRegression.predict`` needs the design matrix, so its side is the same record checks,
    ``encoder_.transform`` and ``predict`` with our weights, clipped the same way. Checks that
    both give the same predictions, records predict alone (both models on the design matrix),
    and returns the two in-process calls, timed by the caller in rounds against HTTP.
    """
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from app.recommender.bundle import load_bundle
    from app.recommender.models.linear import RATING_MAX, RATING_MIN
    from app.services.models import attach_rating_model

    bundle = load_bundle(model_path)
    if bundle.version != served_version:
        raise RuntimeError(
            f"the server answers with model {served_version}, but {model_path} now holds {bundle.version} "
            "(trained meanwhile?): the in-process side would time another model; run again"
        )
    attach_rating_model(bundle)
    ours = bundle.rating_model
    if ours is None:
        return None
    regressor = ours.regressor_
    sk = LinearRegression()
    sk.coef_ = np.asarray(regressor.coef_, dtype=np.float64)
    sk.intercept_ = float(regressor.intercept_)
    sk.n_features_in_ = len(sk.coef_)

    def theirs() -> Any:
        return np.clip(
            sk.predict(ours.encoder_.transform(ours.record_columns(records))), RATING_MIN, RATING_MAX
        )

    assert np.allclose(ours.predict_records(records), theirs(), atol=1e-4)
    X = ours.encoder_.transform(ours.record_columns(records))
    results.figures.update(
        predict1000_slr_predict_only_us=median_time(lambda: regressor.predict(X), repeat=50) * 1e6,
        predict1000_sklearn_predict_only_us=median_time(lambda: sk.predict(X), repeat=50) * 1e6,
    )
    return (lambda: ours.predict_records(records)), theirs


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> Results:
    """One benchmark run in a work directory and a database of its own, both removed however the
    run ends (a failure, Ctrl-C, SIGTERM: see :func:`main`); the work directory (uwsgi's log) is
    kept, and named, when the run failed or ``--keep`` is given."""
    results = Results()
    # first: a refused data dir (DataUnavailableError) leaves no work directory nor scratch database
    seed_forest = seed_forest_scoring(Path(args.data_dir), results)
    workdir = Path(tempfile.mkdtemp(prefix="movierec-bench-"))
    (workdir / "prometheus").mkdir()
    temp_database = None
    finished = False
    try:
        if args.database == "sqlite":
            database_url = f"sqlite:///{workdir / 'bench.db'}"
        else:
            temp_database, database_url = create_pg_database(args.pg_admin_url)
        measure_all(args, workdir, database_url, results, seed_forest)
        finished = True
        return results
    finally:
        try:
            if temp_database is not None:
                drop_pg_database(args.pg_admin_url, temp_database)
        finally:
            if args.keep or not finished:
                print(f"work directory kept: {workdir}", file=sys.stdout if finished else sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def measure_all(
    args: argparse.Namespace,
    workdir: Path,
    database_url: str,
    results: Results,
    seed_forest: Callable[[], Any] | None,
) -> None:
    """The measurements of :func:`run` into ``results``, against a server it starts and stops (on
    ``database_url``); ``seed_forest`` is the seed's scoring path, fitted by :func:`run` first."""
    from sqlalchemy import func, select

    from app.monitoring.breaker import FALLBACK
    from app.storage.db import make_engine
    from app.storage.models import Feedback, RecommendationRequest

    model_path = Path(args.model_dir).resolve()
    redis_url = args.redis_url if args.redis_url and redis_reachable(args.redis_url) else None
    results.figures["config"] = {
        "database": args.database, "redis": bool(redis_url), "seconds": args.seconds, "rounds": args.rounds,
        "threads": args.threads, "connections": args.connections,
    }  # fmt: skip
    server = Server(model_path, database_url, workdir, Path(args.data_dir).resolve(), redis_url)
    acknowledged_recommends = 0
    try:
        server.wait_ready()
        token = server.login()
        seconds, threads, connections = args.seconds, args.threads, args.connections
        echo_script = post_script(token, PROFILE)
        recommend_script = post_script(token, PROFILE)

        meter = CpuMeter(server, database_url if args.database == "postgres" else None)
        # warm both paths up (imports, pools, caches)
        wrk(server.port, "/api/echo", echo_script, 2, threads, connections, workdir)
        warm = wrk(server.port, "/api/recommend", recommend_script, 2, threads, connections, workdir)
        acknowledged_recommends += warm["requests"] - warm["non2xx"]

        def measure(path: str, scripts: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            """Rounds of echo and ``path`` back to back, in ABBA order; each ratio is taken within a round."""
            echo_runs, runs = [], []
            for i, script in enumerate(scripts):
                for endpoint in ("echo", path) if i % 2 == 0 else (path, "echo"):
                    target, body = ("/api/echo", echo_script) if endpoint == "echo" else (path, script)
                    run = functools.partial(
                        wrk, server.port, target, body, seconds, threads, connections, workdir
                    )
                    (echo_runs if endpoint == "echo" else runs).append(meter.measure(run))
            return echo_runs, runs

        echo_runs, recommend_runs = measure("/api/recommend", [recommend_script] * args.rounds)
        acknowledged_recommends += sum(r["requests"] - r["non2xx"] for r in recommend_runs)
        results.figures["echo"] = summary(echo_runs)
        results.figures["recommend"] = {
            **summary(recommend_runs),
            "rps_ratios": ratios(recommend_runs, echo_runs, "rps"),
            "p99_ratios": ratios(recommend_runs, echo_runs, "p99_us"),
            "cpu_ratios": cpu_ratios(recommend_runs, echo_runs),
        }

        # one connection: per-request latency of a full HTTP round trip, and the seed forest's
        # scoring in-process, in rounds back to back (ABBA): timed once each, minutes apart, a
        # slow spell of the VM that doubled the HTTP latency judged it against a forest timed
        # in a fast one (twenty-ninth machine)
        single_ms: list[float] = []
        forest_ms: list[float] = []
        single_failed = 0
        for i in range(args.rounds):
            for side in ("http", "forest") if i % 2 == 0 else ("forest", "http"):
                if side == "http":
                    single = wrk(server.port, "/api/recommend", recommend_script, 1, 1, 1, workdir)
                    acknowledged_recommends += single["requests"] - single["non2xx"]
                    single_failed += single["non2xx"] + single["socket_errors"]
                    single_ms.append(single["mean_us"] / 1e3)
                elif seed_forest is not None:
                    forest_ms.append(median_time(seed_forest, repeat=5) * 1e3)
        results.figures["recommend_single_connection_mean_ms"] = statistics.median(single_ms)
        results.figures["recommend_single_connection_failed"] = single_failed
        if forest_ms:
            results.figures["seed_rf_ms"] = statistics.median(forest_ms)
            results.figures["seed_rf_ratios"] = [f / h for f, h in zip(forest_ms, single_ms, strict=True)]

        # scores over unique (id, movie) pairs issued beforehand, a share of them per round
        score_ids = args.score_ids or score_ids_needed(max(r["rps"] for r in echo_runs), seconds, args.rounds)
        results.figures["score_ids"] = score_ids
        n_pairs = 0
        pair_files = [workdir / f"pairs-{i}.jsonl" for i in range(args.rounds)]
        outs = [path.open("w") for path in pair_files]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for i in range(score_ids):
            status, body = send(connection, "POST", "/api/recommend", {**PROFILE, "age": 18 + i % 60,
                                "max_recs": 100}, token)  # fmt: skip
            if status != 200:
                raise RuntimeError(f"issuing ids failed: {status} {body}")
            acknowledged_recommends += 1
            for title in body["recommendations"]:
                pair = {"id": body["id"], "movie": title, "score": 0.5 + (n_pairs % 10) * 0.5}
                outs[i % args.rounds].write(json.dumps(pair) + "\n")
                n_pairs += 1
        connection.close()
        for out in outs:
            out.close()
        score_scripts = [
            _SCORE_LUA % {"pairs": str(path), "threads": threads, "token": token} for path in pair_files
        ]
        score_echo_runs, score_runs = measure("/api/recommend/score", score_scripts)
        results.figures["score_echo"] = summary(score_echo_runs)
        results.figures["score"] = {
            **summary(score_runs),
            "rps_ratios": ratios(score_runs, score_echo_runs, "rps"),
            "cpu_ratios": cpu_ratios(score_runs, score_echo_runs),
            "spent_rounds": sum(1 for r in score_runs if r["spent"]),
            "acknowledged": sum(r["ok"] for r in score_runs),
            "refused": sum(r["bad"] for r in score_runs),
            "pairs_available": n_pairs,
        }

        # /api/predict/batch with 1,000 records
        import numpy as np

        rng = np.random.default_rng(0)
        from app.recommender.bundle import load_bundle

        catalogue_ids = load_bundle(model_path).movie_ids
        records = [
            {"age": int(rng.integers(18, 70)), "gender": "MF"[i % 2], "occupation": "student",
             "movie_id": int(catalogue_ids[int(rng.integers(0, len(catalogue_ids)))])}
            for i in range(1_000)
        ]  # fmt: skip
        # the client's own JSON work is not the server's: the body is encoded once, the answer
        # checked once, and each timed request only sends bytes and reads the reply
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        status, body = send(connection, "POST", "/api/predict/batch", {"instances": records}, token)
        if status != 200 or len(body["predictions"]) != len(records):
            raise RuntimeError(f"/api/predict/batch failed: {status} {str(body)[:300]}")
        payload = json.dumps({"instances": records}).encode()
        sides = predict_batch_sides(model_path, records, results, body["model_version"])
        if sides is not None:
            ours, theirs = sides
            http_batch = checked_post(connection, "/api/predict/batch", payload, token)
            # in rounds, like the endpoints against echo: HTTP and scikit-learn timed back to
            # back in ABBA order, a ratio per round (one timing of each, minutes apart, moved by
            # a factor of two on a VM: docs/performance.md, "Tenth machine")
            times: dict[str, list[float]] = {"http": [], "sklearn": [], "ours": []}
            for i in range(args.rounds):
                sides_in_order = [("http", http_batch), ("sklearn", theirs), ("ours", ours)]
                for name, call in sides_in_order if i % 2 == 0 else reversed(sides_in_order):
                    times[name].append(median_time(call, repeat=10))
            results.figures.update(
                predict1000_http_ms=statistics.median(times["http"]) * 1e3,
                predict1000_sklearn_pipeline_ms=statistics.median(times["sklearn"]) * 1e3,
                predict1000_ours_in_process_ms=statistics.median(times["ours"]) * 1e3,
                predict1000_ratios=[h / t for h, t in zip(times["http"], times["sklearn"], strict=True)],
            )
        connection.close()

        # memory per worker with the bundle loaded
        workers = server.workers()
        results.figures["workers"] = {str(pid): memory_kib(pid) for pid in workers}
        results.figures["master"] = memory_kib(server.process.pid)
        results.figures["router"] = {str(pid): memory_kib(pid) for pid in server.workers("http")}
    finally:
        status = server.stop()
        results.figures["uwsgi_exit_status"] = status

    # durability: count rows after a graceful stop
    engine = make_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://", 1)
        if database_url.startswith("postgresql://") else database_url
    )  # fmt: skip
    with engine.connect() as connection_:
        feedback_rows = int(connection_.scalar(select(func.count()).select_from(Feedback)))
        request_rows = int(connection_.scalar(select(func.count()).select_from(RecommendationRequest)))
        # lists the circuit breaker's fallback answered: the model was not what was measured
        fallback_rows = int(
            connection_.scalar(
                select(func.count())
                .select_from(RecommendationRequest)
                .where(RecommendationRequest.strategy == FALLBACK)
            )
        )
    engine.dispose()
    results.figures["rows"] = {"feedback": feedback_rows, "recommendation_requests": request_rows,
                               "acknowledged_recommendations": acknowledged_recommends,
                               "fallback": fallback_rows}  # fmt: skip

    # in-process comparisons (after the server is gone, so they do not compete for the 2 cores)
    results.figures["lookup_in_process_us"] = lookup_in_process(model_path) * 1e6

    evaluate(results)


def evaluate(results: Results) -> None:
    f = results.figures
    recommend, score = f["recommend"], f["score"]

    def spread(values: list[float], rounding: str = decimal.ROUND_FLOOR) -> str:
        # The judged median gets three decimals, rounded towards a miss (down for a ">=" bar, up
        # for a "<=" one): at two, a 0.895 that missed 0.9 printed as 0.90, and rounded to the
        # nearest, a 0.8996 printed as 0.900 beside "NO".
        median, low, high = statistics.median(values), min(values), max(values)
        shown = decimal.Decimal(repr(median)).quantize(decimal.Decimal("0.001"), rounding=rounding)
        return f"{shown}x (median of {len(values)} rounds; {low:.2f}-{high:.2f})"

    # wrk counts every answer as throughput and every answer's latency, a 429 or 500 as much as
    # a 200, and a request lost to a socket error (a worker restarting) only slows its run: runs
    # with failed requests measured something else, and no target is judged met on them.
    failed = {
        "echo": f["echo"]["failed"],
        "/api/recommend": recommend["failed"],
        "echo (score rounds)": f["score_echo"]["failed"],
        "/api/recommend/score": score["failed"],
        "/api/recommend, one connection": f["recommend_single_connection_failed"],
    }

    def judged(passed: bool, detail: str, *runs: str, lists: bool = False) -> tuple[bool, str]:
        """``passed`` unless ``runs`` had failed requests, or (``lists``: a recommend target) the
        breaker's fallback answered lists during the run; the reason is added to ``detail``."""
        lost = sum(failed[run] for run in runs)
        if lost:
            passed, detail = False, f"{detail}; not judged: {lost} requests failed (non-2xx or socket errors)"
        if lists and f["rows"]["fallback"]:
            # the breaker opened: those lists were the fallback's (a popularity lookup), not the model's
            passed = False
            detail += f"; not judged: {f['rows']['fallback']} lists came from the circuit breaker's fallback"
        return passed, detail

    ratio = statistics.median(recommend["rps_ratios"])
    results.check(
        "/api/recommend throughput >= 0.9x echo",
        *judged(ratio >= 0.9, spread(recommend["rps_ratios"]), "echo", "/api/recommend", lists=True),
    )
    p99 = statistics.median(recommend["p99_ratios"])
    results.check(
        "/api/recommend p99 <= 1.2x echo",
        *judged(
            p99 <= 1.2,
            spread(recommend["p99_ratios"], decimal.ROUND_CEILING),
            "echo",
            "/api/recommend",
            lists=True,
        ),
    )
    ratio = statistics.median(score["rps_ratios"])
    passed, detail = judged(
        ratio >= 0.6, spread(score["rps_ratios"]), "echo (score rounds)", "/api/recommend/score"
    )
    if score["spent_rounds"]:
        passed = False
        detail += (
            f"; not judged: the pairs ran out before the end of {score['spent_rounds']} rounds "
            "(their rate counts the idle rest of the run): raise --score-ids"
        )
    results.check("/api/recommend/score throughput >= 0.6x echo", passed, detail)
    # Each (id, movie) pair is posted once, so rows >= acknowledged means none was lost; rows may
    # exceed it by the requests in flight when wrk stopped (answered, but no longer counted).
    stored = f["rows"]["feedback"] >= score["acknowledged"] > 0 and score["refused"] == 0
    results.check(
        STORED,
        stored,
        f"{score['acknowledged']} acknowledged, {f['rows']['feedback']} rows, {score['refused']} refused",
    )
    kept = f["rows"]["recommendation_requests"] >= f["rows"]["acknowledged_recommendations"]
    results.check(LOGGED, kept,
                  f"{f['rows']['acknowledged_recommendations']} acknowledged, "
                  f"{f['rows']['recommendation_requests']} rows")  # fmt: skip
    # a target that could not be measured is not met: it was left out of the table, and --strict
    # passed a run that had not measured it
    if not f.get("seed_rf_ratios"):
        results.check(SEED_FOREST, False, "not measured: no ml-100k in --data-dir to fit the seed forest on")
    else:
        in_process = f["seed_rf_ms"] / (f["lookup_in_process_us"] / 1e3)
        results.check(
            SEED_FOREST,
            *judged(
                statistics.median(f["seed_rf_ratios"]) >= 10,
                spread(f["seed_rf_ratios"]) + f" over HTTP ({in_process:.0f}x in-process)",
                "/api/recommend, one connection",
                lists=True,
            ),
        )
    if "predict1000_ratios" not in f:
        results.check(PREDICT_BATCH, False, "not measured: the bundle has no rating model")
    else:
        ratio = statistics.median(f["predict1000_ratios"])
        results.check(
            PREDICT_BATCH,
            ratio <= 2.0,
            spread(f["predict1000_ratios"], decimal.ROUND_CEILING)
            + "; HTTP vs in-process encode + sklearn predict",
        )
    results.check(
        ANSWERED,
        not any(failed.values()),
        ", ".join(f"{run} {count}" for run, count in failed.items()) + " failed",
    )


def exit_status(results: Results, strict: bool) -> int:
    """1 when a check that always counts fails (durability, every request answered), or with
    ``strict`` when any check fails; else 0."""
    always = [ok for name, ok, _ in results.checks if name in ALWAYS_JUDGED]
    if not all(always) or (strict and not all(ok for _, ok, _ in results.checks)):
        return 1
    return 0


def cpu_line(figures: dict[str, Any]) -> str:
    """``1,234 µs (workers 1,100, router 80, database 54 ...)``, and echo's over it (median ratio)."""
    cpu = figures["cpu_us"]
    parts = ", ".join(f"{name} {value:,.0f}" for name, value in cpu.items())
    text = f"{sum(cpu.values()):,.0f} µs ({parts}; medians of the rounds)"
    if "cpu_ratios" in figures:
        text += f"; echo's in the same round / this: {statistics.median(figures['cpu_ratios']):.2f}x"
    return text


def report(results: Results) -> str:
    f = results.figures
    e, r, sc, se, rows = f["echo"], f["recommend"], f["score"], f["score_echo"], f["rows"]
    lines = [
        "| measure | value |",
        "|---|---|",
        f"| echo (JWT floor) throughput | {e['rps']:.0f} req/s, p50 {e['p50_ms']:.2f} ms, "
        f"p99 {e['p99_ms']:.2f} ms |",
        f"| /api/recommend throughput | {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms |",
        f"| /api/recommend/score throughput | {sc['rps']:.0f} req/s, p99 {sc['p99_ms']:.2f} ms, "
        f"{sc['acknowledged']} acknowledged (echo in the same rounds: {se['rps']:.0f} req/s) |",
        f"| rows after graceful stop | {rows['feedback']} feedback, {rows['recommendation_requests']} "
        f"requests ({rows['acknowledged_recommendations']} acknowledged, "
        f"{rows['fallback']} from the fallback) |",
        f"| /api/recommend, one connection | {f['recommend_single_connection_mean_ms']:.2f} ms mean "
        "(median of the rounds) |",
    ]
    for label, endpoint in (("echo", e), ("/api/recommend", r), ("/api/recommend/score", sc)):
        lines.append(f"| server CPU per request, {label} | {cpu_line(endpoint)} |")
    if f.get("seed_rf_ms"):
        lines.append(f"| seed random forest, one profile x catalogue (in-process) | {f['seed_rf_ms']:.1f} ms "
                     f"(median of the rounds; fit {f['seed_rf_fit_s']:.1f} s) |")  # fmt: skip
        lines.append(f"| our lookup (in-process) | {f['lookup_in_process_us']:.1f} µs |")
    if "predict1000_sklearn_pipeline_ms" in f:
        lines += [
            f"| /api/predict/batch, 1,000 records (HTTP) | {f['predict1000_http_ms']:.2f} ms |",
            f"| 1,000 records in-process: ours / encoder + sklearn predict | "
            f"{f['predict1000_ours_in_process_ms']:.2f} ms / {f['predict1000_sklearn_pipeline_ms']:.2f} ms |",
            f"| predict only (1,000 records): SimpleLinearRegression / sklearn | "
            f"{f['predict1000_slr_predict_only_us']:.0f} µs / "
            f"{f['predict1000_sklearn_predict_only_us']:.0f} µs |",
        ]
    for label, processes in (("worker", f["workers"]), ("HTTP router", f.get("router", {}))):
        for pid, memory in processes.items():
            lines.append(f"| {label} {pid} memory | RSS {memory.get('rss', 0) / 1024:.0f} MiB, "
                         f"PSS {memory.get('pss', 0) / 1024:.0f} MiB |")  # fmt: skip
    lines += ["", "| target | met | measured |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} | {detail} |" for name, ok, detail in results.checks]
    return "\n".join(lines)


def _stopped(signum: int, frame: Any) -> None:
    print(f"serve_bench: {signal.Signals(signum).name}, stopping the server and cleaning up", file=sys.stderr)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "model"), help="model store or bundle (trained)")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="ml-100k (seed forest comparison)")
    parser.add_argument("--database", choices=("postgres", "sqlite"), default="postgres",
                        help="a fresh PostgreSQL database (as in compose) or SQLite")  # fmt: skip
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("MOVIEREC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--redis-url", default=os.environ.get("MOVIEREC_BENCH_REDIS", "redis://127.0.0.1:6379/15"),
                        help="used when reachable (as in compose); '' to run without Redis")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured wrk run")
    parser.add_argument(
        "--rounds", type=int, default=6, help="rounds of echo and the measured endpoint back to back (ABBA)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--score-ids",
        type=int,
        default=None,
        help="ids issued for the score runs (x100 pairs); default: enough for 1.5x echo's best rate",
    )
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "serve.json"))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a performance target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (uwsgi log)")
    parser.add_argument("--check", action="store_true", help="only check what a run needs (wrk, PostgreSQL)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    problem = pg_problem(args.pg_admin_url) if args.database == "postgres" else None
    if problem is not None:  # psycopg's traceback came after the minutes of `make bench` before it
        print(
            f"PostgreSQL at --pg-admin-url (MOVIEREC_BENCH_PG) is not reachable: {problem}; "
            "start it, point MOVIEREC_BENCH_PG at one, or run bench/serve_bench.py --database sqlite",
            file=sys.stderr,
        )
        return 2
    if args.check:
        return 0
    from app.recommender.data import DataUnavailableError
    from app.stop_signals import handled

    # SIGTERM (a CI job cancelled, `kill`) and SIGHUP ended the process on the spot: no finally
    # ran, so uwsgi, its database and the work directory outlived it. They now unwind like Ctrl-C.
    try:
        with handled(_stopped, (signal.SIGTERM, signal.SIGHUP)):
            results = run(args)
    except DataUnavailableError as exc:  # --data-dir refused: one line, as the checks above
        print(f"bench/serve_bench.py: {exc}", file=sys.stderr)
        return 2
    table = report(results)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"figures": results.figures, "checks": results.checks}, indent=2))
    return exit_status(results, args.strict)


if __name__ == "__main__":
    raise SystemExit(main())
