"""Instructions per request, counted by valgrind's callgrind: the recommend path against echo.

On the VMs this runs on, time-based ratios of two endpoints move by ±10 % from run to run
(docs/performance.md): more than most single changes to a handler. Instruction counts do not
move: callgrind counts what the CPU executes, whatever else the machine is doing. This
benchmark runs the app in-process (Flask's test client, the same handlers, hooks, JWT check,
request log and metrics tally as under uwsgi; not the HTTP router) under callgrind and counts,
for each endpoint, the instructions of the thread that serves the requests, between
``callgrind_control -z`` (zero) and ``-d`` (dump) around ``--requests`` requests. Background
threads (the request log's flusher, the metrics tally) are left out: their share per request
depends on how many requests a flush gathers, which the 50x slowdown under valgrind distorts.

Prints instructions per request of echo, ``/api/recommend`` (segment) and ``/api/recommend``
(known user), each one's excess over echo, and echo's over each. The test client's own work
(building the WSGI environ, reading the response) is in every figure, so the ratio is higher
than under uwsgi; the excess over echo is the handler's own cost. Takes ~5 minutes (the app's
start under valgrind is most of it). Needs valgrind (Debian package); uses a temporary SQLite
database and no Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_bench import PROFILE  # the body serve_bench posts (this script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASSWORD = "instructions-bench-password"


def serve_phases(warmup: int) -> None:
    """Under callgrind: build the app (configured by the environment), warm it up, then run the
    phases the parent asks for on stdin."""
    from app import create_app

    client = create_app().test_client()
    login = client.post("/api/login", json={"session_password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.get_json()['access_token']}"}
    bundle = client.application.extensions["movierec"].recommendations.models.require()
    known_user = int(bundle.tables.user_ids[0]) if len(bundle.tables.user_ids) else None
    bodies = {
        "echo": ("/api/echo", PROFILE),
        "recommend": ("/api/recommend", PROFILE),
        "recommend_user": ("/api/recommend", {"user_id": known_user} if known_user else PROFILE),
    }

    def run(name: str, n: int) -> None:
        path, body = bodies[name]
        for _ in range(n):
            response = client.post(path, json=body, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"{path} answered {response.status_code}: {response.get_data(as_text=True)}")

    for name in bodies:
        run(name, warmup)
    print("ready", flush=True)
    for line in sys.stdin:
        name, n = line.split()
        run(name, int(n))
        print("done", flush=True)


def main_thread_instructions(dump_prefix: Path) -> int:
    """The main thread's event total in a dump written by ``callgrind_control -d``."""
    main = [path for path in dump_prefix.parent.glob(f"{dump_prefix.name}-*") if path.name.endswith("-01")]
    if len(main) != 1:
        raise RuntimeError(f"expected one main-thread dump for {dump_prefix}, found {main}")
    for line in main[0].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {main[0]}")


def _wait_for(stream: Any, word: str, log: str) -> None:
    """Read the child's stdout up to a line ``word`` (its log lines go to stdout too)."""
    for line in stream:
        if line.strip() == word:
            return
    raise RuntimeError(f"the app under valgrind ended before saying {word!r}; its stderr: {log}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="movierec-instructions-"))
    env = {
        **os.environ,
        "SESSION_PASSWORD": PASSWORD,
        "ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "MOVIEREC_JWT_SECRET": secrets.token_urlsafe(48),
        "ML_MODEL_PATH": str(Path(args.model_dir).resolve()),
        "MOVIEREC_MODEL_DIR": str(Path(args.model_dir).resolve()),
        "MOVIEREC_DATA_DIR": str(Path(args.data_dir).resolve()),
        "MOVIEREC_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "MOVIEREC_FEEDBACK_JOURNAL_DIR": str(work / "feedback-journal"),
        "MOVIEREC_LOG_LEVEL": "ERROR",
        "MOVIEREC_BREAKER_NAME": f"instructions-{secrets.token_hex(6)}",
    }
    env.pop("MOVIEREC_REDIS_URL", None)
    out = work / "cg"
    command = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}.%p",
        sys.executable, __file__, "--serve", "--warmup", str(args.warmup),
    ]  # fmt: skip
    errors = (work / "stderr.txt").open("w")  # valgrind's and the app's, for when it fails
    child = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    figures: dict[str, list[float]] = {}
    try:
        _wait_for(child.stdout, "ready", errors.name)
        phases = ["echo", "recommend", "recommend_user"] * args.repeat
        for index, name in enumerate(phases, start=1):
            subprocess.run(["callgrind_control", "-z", str(child.pid)], check=True, capture_output=True)
            child.stdin.write(f"{name} {args.requests}\n")
            child.stdin.flush()
            _wait_for(child.stdout, "done", errors.name)
            subprocess.run(["callgrind_control", "-d", name, str(child.pid)], check=True, capture_output=True)
            prefix = Path(f"{out}.{child.pid}.{index}")
            deadline = time.monotonic() + 30
            while not any(prefix.parent.glob(f"{prefix.name}-*01")) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # every thread's file written
            figures.setdefault(name, []).append(main_thread_instructions(prefix) / args.requests)
    finally:
        child.stdin.close()
        child.terminate()
        child.wait(timeout=60)
        errors.close()
    # the callgrind dumps (one per thread and phase) and the database: every run left them in the
    # temporary directory; a failed run keeps them, with valgrind's stderr the error names
    shutil.rmtree(work, ignore_errors=True)
    return {name: min(values) for name, values in figures.items()} | {"runs": figures}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / "model"))
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--requests", type=int, default=200, help="requests per measured phase")
    parser.add_argument("--repeat", type=int, default=2, help="measured phases per endpoint")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "instructions.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="only check what a run needs (valgrind)")
    args = parser.parse_args(argv)
    if args.serve:
        serve_phases(args.warmup)
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:  # FileNotFoundError's traceback came after the minutes of `make bench-instructions`
        found = f"{', '.join(missing)} not found"
        print(f"valgrind is not installed ({found}): apt-get install valgrind", file=sys.stderr)
        return 2
    if args.check:
        return 0
    figures = measure(args)
    echo = figures["echo"]
    print("| endpoint (in-process, request thread) | instructions per request | over echo | echo's / this |")
    print("|---|---|---|---|")
    labels = {"echo": "echo", "recommend": "/api/recommend", "recommend_user": "/api/recommend, known user"}
    for name, label in labels.items():
        value = figures[name]
        print(f"| {label} | {value:,.0f} | {value - echo:+,.0f} | {echo / value:.3f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
