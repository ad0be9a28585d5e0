"""The seed's entry points as real processes: main.py, run_accuracy_tests.py, the movierec command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import PROFILE, free_port, hang_up_at_default_in_children

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MOVIEREC_", "SESSION_PASSWORD", "ML_MODEL_PATH", "ADMIN_PASSWORD"))
    }
    env.update(extra)
    return env


def _post(url: str, body: dict, token: str | None = None) -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_main_refuses_to_start_without_session_password(tmp_path: Path, model_store: Path) -> None:
    result = subprocess.run(
        [sys.executable, "main.py", "--port", str(free_port())],
        cwd=ROOT, env=_env(ML_MODEL_PATH=str(model_store)), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "SESSION_PASSWORD" in result.stderr


def test_main_refuses_without_jwt_secret_unless_debug(tmp_path: Path, model_store: Path) -> None:
    result = subprocess.run(
        [sys.executable, "main.py", "--port", str(free_port())],
        cwd=ROOT, env=_env(ML_MODEL_PATH=str(model_store), SESSION_PASSWORD="test"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "MOVIEREC_JWT_SECRET" in result.stderr


def _movierec() -> str:
    return shutil.which("movierec", path=str(Path(sys.executable).parent)) or "movierec"


def _seed_env(tmp_path: Path, model_store: Path, **extra: str) -> dict[str, str]:
    """The seed's variables (ML_MODEL_PATH, SESSION_PASSWORD=test); a database and journal of the test's."""
    return _env(
        ML_MODEL_PATH=str(model_store),
        SESSION_PASSWORD="test",
        MOVIEREC_DATABASE_URL=f"sqlite:///{tmp_path / 'seed.db'}",
        MOVIEREC_FEEDBACK_JOURNAL_DIR=str(tmp_path / "feedback-journal"),
        **extra,
    )


def _started(argv: list[str], env: dict[str, str], port: int) -> tuple[subprocess.Popen, str]:
    """The server ``argv`` starts, once its /health/ready answers 200 on ``port``, and its base URL."""
    with hang_up_at_default_in_children():  # what a test run under nohup ignores, a terminal's doesn't
        process = subprocess.Popen(
            argv,
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, base
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"server did not start: {process.communicate()[0]}")
            time.sleep(0.3)


def _login_and_recommend(base: str) -> tuple[str, dict]:
    """The seed's first two curls: a token for SESSION_PASSWORD=test, and ten movies for PROFILE."""
    status, body = _post(f"{base}/api/login", {"session_password": "test"})
    assert status == 200
    status, rec = _post(f"{base}/api/recommend", PROFILE, body["access_token"])
    assert status == 200 and len(rec["recommendations"]) == 10
    return body["access_token"], rec


@pytest.mark.parametrize("command", ["main.py", "movierec serve"])
def test_seed_command_serves_the_curl_sequence(tmp_path: Path, model_store: Path, command: str) -> None:
    """ML_MODEL_PATH=… SESSION_PASSWORD=test python main.py --port P --debug (and `movierec serve`,
    what `make run` starts), then login/recommend/score."""
    port = free_port()
    env = _seed_env(tmp_path, model_store)
    argv = {
        "main.py": [sys.executable, "main.py", "--port", str(port), "--debug"],
        "movierec serve": [_movierec(), "serve", "--port", str(port), "--debug"],
    }[command]
    process, base = _started(argv, env, port)
    try:
        token, rec = _login_and_recommend(base)
        status, ok = _post(
            f"{base}/api/recommend/score",
            {"id": rec["id"], "movie": rec["recommendations"][0], "score": 5.0},
            token,
        )
        assert (status, ok) == (200, "Ok")
        # --debug is Flask's debug mode without Werkzeug's interactive debugger: every error is
        # answered in the envelope anyway, and its /console (a Python shell behind a PIN) was open
        for path in ("/console", "/console?__debugger__=yes&cmd=resource&f=style.css"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"{base}{path}", timeout=5)
            assert missing.value.code == 404
            assert json.loads(missing.value.read())["error"]["code"] == "not_found"
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    # SIGTERM (kill, systemd, an IDE's stop button) stops the development server as Ctrl-C does:
    # the exit hooks ship the journal and flush the request log. It used to end the process
    # outright: the last 0.1 s of request rows were lost, and the next start replayed the
    # segment left behind with a WARNING.
    assert process.returncode == 0, output[-2000:]
    assert not list((tmp_path / "feedback-journal").rglob("*.wal")), output[-2000:]
    assert "test" not in [line.strip() for line in output.splitlines()]
    # One line per request (the app's access log; werkzeug's own request line is dropped), and
    # no terminal colour codes inside the JSON lines (werkzeug styles its banner).
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    login_lines = [r for r in records if "/api/login" in json.dumps(r)]
    assert [r["logger"] for r in login_lines] == ["movierec.access"], login_lines
    assert "\x1b" not in output and "\\u001b" not in output
    assert any("Running on http://127.0.0.1" in r["message"] for r in records)
    # Alembic's lines: the migrations that ran, not its plugin set-up or dialect preamble
    alembic = [r["message"] for r in records if r["logger"].startswith("alembic")]
    assert alembic and all(message.startswith("Running upgrade") for message in alembic), alembic


@pytest.mark.parametrize("nohup", [False, True], ids=["hang-up", "under-nohup"])
def test_a_hang_up_stops_the_development_server_as_ctrl_c_does(
    tmp_path: Path, model_store: Path, nohup: bool
) -> None:
    """Closing the terminal or SSH session ``python main.py`` (or ``make run``) runs in sends it
    SIGHUP, which ended it outright: the rows its request log had not written yet were lost, ids
    already answered, whose scores were then refused for good. It now stops as on SIGTERM or
    Ctrl-C, through its exit hooks (exit 0, the row written); under ``nohup`` SIGHUP stays ignored."""
    port = free_port()
    env = _seed_env(tmp_path, model_store, MOVIEREC_REQUEST_LOG_FLUSH_SECONDS="60")  # the row stays pending
    argv = [*(["nohup"] if nohup else []), sys.executable, "main.py", "--port", str(port), "--debug"]
    process, base = _started(argv, env, port)
    try:
        _token, rec = _login_and_recommend(base)
        process.send_signal(signal.SIGHUP)
        if nohup:
            time.sleep(1)
            assert process.poll() is None, "SIGHUP ignored by nohup must stay ignored"
            process.terminate()
        output = process.communicate(timeout=30)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output[-2000:]
    from app.storage.db import Database

    database = Database(env["MOVIEREC_DATABASE_URL"])
    try:
        assert database.get_request(rec["id"]) is not None, output[-2000:]
    finally:
        database.dispose()


def test_accuracy_script_passes_and_fails_with_the_seed_interface(tmp_path: Path, model_store: Path) -> None:
    bundle = (model_store / "latest").resolve()
    script = [sys.executable, "tests/run_accuracy_tests.py"]
    ok = subprocess.run(
        [*script, str(bundle), str(bundle / "test_data.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[0])["passed"] is True

    regressed = json.loads((bundle / "test_data.json").read_text())
    regressed["expected_score"] = min(1.0, regressed["expected_score"] + 0.05)
    (tmp_path / "regressed.json").write_text(json.dumps(regressed))
    bad = subprocess.run(
        [*script, str(bundle), str(tmp_path / "regressed.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "FAILED" in bad.stderr
    tolerant = subprocess.run(
        [*script, str(bundle), str(tmp_path / "regressed.json"), "--error-tolerance", "0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tolerant.returncode == 0


def test_movierec_train_writes_a_new_bundle_and_moves_latest(
    tmp_path: Path, synthetic_data_dir: Path
) -> None:
    movierec = _movierec()
    store = tmp_path / "store"
    command = [
        movierec,
        "train",
        "--data-dir",
        str(synthetic_data_dir),
        "--model-dir",
        str(store),
        "--models",
        "most_liked,segment_most_liked",
        "--seeds",
        "0,1",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    first_path = Path(first.stdout.strip().splitlines()[-1])
    assert first_path.is_dir() and (store / "latest").resolve() == first_path.resolve()
    again = subprocess.run(
        [*command, "--if-missing"], capture_output=True, text=True, timeout=300, check=True
    )
    assert "existing" in again.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    second_path = Path(second.stdout.strip().splitlines()[-1])
    assert second_path != first_path and first_path.is_dir()  # bundles are immutable: the old one stays
    assert (store / "latest").resolve() == second_path.resolve()


@pytest.mark.parametrize("script", ["monitor-docker.py", "deploy-docker.py"])
def test_host_scripts_run_on_the_standard_library_alone(script: str) -> None:
    # the documented systemd unit and deploy run these with the host's python3, not the venv:
    # an import of a third-party package (sqlalchemy through a shared helper, say) broke them there
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60,
        env=_env(), cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
