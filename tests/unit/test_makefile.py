"""The Makefile's output: a successful ``make run`` prints what it does, not its recipes.

A new user's first ``make run`` echoed every recipe line with its error handler, so a run that
worked printed "make: pip could not install into .venv … is the package index reachable" and
"make: to take ml-100k from a copy you have: …". The hints must appear when their step fails, and
only then. The real Makefile runs here with a stand-in Python (its ``venv`` makes a directory, its
``pip`` and ``pytest`` exit with the status asked for) and a stand-in ``movierec`` (or the real
``data fetch``, its download sources failing at once), so nothing is installed or downloaded;
``make -n`` still shows the real commands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import spoil_a_rating, write_grouplens

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text()

PIP_HINT = "make: pip could not install into"
DATA_HINT = "make: to take ml-100k from a copy you have"
NO_TESTS_HINT = "pytest collected no tests"

# Every other command runs the real Python: the version checks, the secrets (which FAKE_SECRETS_STATUS
# fails after their first line, as a full disk or Ctrl-C would).
FAKE_PYTHON = """#!/bin/sh
case "$1 $2" in
"-m venv") mkdir -p "$3/bin" && ln -sf "{me}" "$3/bin/python" && exit 0 ;;
"-m pip") [ "$FAKE_PIP_STATUS" = 0 ] || echo "ERROR: pip stand-in" >&2; exit "$FAKE_PIP_STATUS" ;;
"-m pytest") exit "$FAKE_PYTEST_STATUS" ;;
"-c import secrets"*) [ "$FAKE_SECRETS_STATUS" = 0 ] \\
    || {{ echo "SESSION_PASSWORD=cut-short"; exit "$FAKE_SECRETS_STATUS"; }} ;;
esac
exec {python} "$@"
"""
FAKE_MOVIEREC = """#!/bin/sh
case "$1 $2" in
"serve --check") [ "$FAKE_CHECK_STATUS" = 0 ] || echo "Error: port taken" >&2; exit "$FAKE_CHECK_STATUS" ;;
esac
echo "movierec stand-in: $1"
"""
# The real `movierec data fetch`, PyPI and GroupLens unreachable (no test reaches the network);
# any other command fails, so a data step that wrongly succeeds trains and serves nothing.
OFFLINE_FETCH = """#!/bin/sh
[ "$1 $2" = "data fetch" ] || {{ echo "stand-in: only data fetch" >&2; exit 9; }}
PYTHONPATH="{root}" exec "{python}" -c '
import app.recommender.data as data
def unreachable(*args):
    raise OSError("Network is unreachable")
data._from_pypi = data._from_grouplens = unreachable
from app.cli import cli
cli(prog_name="movierec")
' "$@"
"""


class Checkout:
    """``make`` on the repository's Makefile, everything it writes under ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.python = tmp / "python"
        self.python.write_text(FAKE_PYTHON.format(me=self.python, python=sys.executable))
        self.python.chmod(0o755)
        self.venv = tmp / "venv"
        self.secrets = tmp / "var" / "secrets.env"
        self.login = tmp / "var" / "login.json"

    def make(self, *args: str, **status: int) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
        stand_ins = ("pip", "pytest", "check", "secrets")
        env |= {f"FAKE_{name.upper()}_STATUS": str(status.get(name, 0)) for name in stand_ins}
        variables = {
            "PYTHON": self.python, "VENV": self.venv, "DATA_DIR": self.tmp / "data",
            "DATA_SOURCE": "", "MODEL_DIR": self.tmp / "model", "SECRETS": self.secrets,
        }  # fmt: skip
        return subprocess.run(
            ["make", "--no-print-directory", *args, *(f"{k}={v}" for k, v in variables.items())],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def installed(self, movierec: str = FAKE_MOVIEREC) -> None:
        """A virtualenv ``make venv`` made, with a stand-in ``movierec`` in it."""
        assert self.make("venv").returncode == 0
        command = self.venv / "bin" / "movierec"
        command.write_text(movierec)
        command.chmod(0o755)

    def offline(self) -> None:
        """A virtualenv with the real ``data fetch``, its download sources unreachable."""
        self.installed(OFFLINE_FETCH.format(root=ROOT, python=sys.executable))


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    return Checkout(tmp_path)


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def test_a_failed_install_says_what_to_check_and_fails(checkout: Checkout) -> None:
    done = checkout.make("venv", pip=1)
    assert done.returncode != 0
    assert "ERROR: pip stand-in" in _output(done)  # pip's own error, then what to check
    assert PIP_HINT in done.stderr
    assert not (checkout.venv / ".installed-").exists()


def test_a_successful_install_prints_its_steps_and_no_hint(checkout: Checkout) -> None:
    done = checkout.make("venv")
    assert done.returncode == 0, _output(done)
    assert f"creating {checkout.venv}" in done.stdout
    assert "installing dependencies" in done.stdout
    assert PIP_HINT not in _output(done)
    assert "pip install" not in _output(done)  # the step, not its command line
    assert list(checkout.venv.glob(".installed-*"))  # the stamp: a second run installs nothing
    again = checkout.make("venv")
    assert again.returncode == 0
    assert _output(again) == ""


@pytest.mark.parametrize("target", ["data", "model", "run"])
def test_ml_100k_not_obtained_says_how_to_use_a_copy(checkout: Checkout, target: str) -> None:
    checkout.offline()
    done = checkout.make(target)
    assert done.returncode != 0
    assert "Error: could not obtain MovieLens ml-100k; tried pypi: Network is unreachable" in done.stderr
    assert f"{DATA_HINT}: make {target} DATA_SOURCE=DIR-OR-ZIP" in done.stderr


def _refused(data: Path, how: str) -> str:
    """A data directory `data fetch` refuses (``how``); the start of its one error line."""
    write_grouplens(data)
    if how == "partial":
        (data / "u.item").unlink()
        return f"Error: {data} holds part of the GroupLens files: found u.data, u.user; missing u.item"
    return f"Error: {data}: {spoil_a_rating(data)}"


@pytest.mark.parametrize("how", ["partial", "malformed"])
@pytest.mark.parametrize("target", ["data", "model", "run"])
def test_a_refused_data_dir_gets_its_error_and_no_hint_to_use_a_copy(
    checkout: Checkout, target: str, how: str
) -> None:
    """After any refused data directory (part of a layout, a malformed raw file), `make data`,
    `make model` and `make run` printed the fetch's error and then "to take ml-100k from a copy
    you have: make ... DATA_SOURCE=DIR-OR-ZIP", which does not help one whose own files were
    refused. The hint comes only when ml-100k could not be obtained (`data fetch` exits 3)."""
    checkout.offline()
    error = _refused(checkout.tmp / "data", how)
    done = checkout.make(target)
    assert done.returncode != 0
    assert done.stderr.startswith(error), done.stderr
    assert DATA_HINT not in _output(done) and "DATA_SOURCE" not in _output(done), _output(done)
    assert not (checkout.tmp / "data" / "ml-100k").exists()


def test_a_successful_make_run_prints_its_steps_then_the_service(checkout: Checkout) -> None:
    """Everything ``make run`` prints on success: each step, the login banner, the service's output
    (the stand-in's) — no recipe line, no hint for a failure that did not happen. The banner says
    how to stop it: only werkzeug's "Press CTRL+C to quit", inside a JSON log line, did."""
    checkout.installed()
    done = checkout.make("run")
    assert done.returncode == 0, _output(done)
    out = _output(done)
    for hint in (PIP_HINT, DATA_HINT, "DATA_SOURCE", "|| {", "set -a", "exec "):
        assert hint not in out, out
    steps = ["fetching ml-100k", "movierec stand-in: data", "training", "movierec stand-in: train",
             "movierec is starting on", "  stop:      Ctrl-C", "movierec stand-in: serve"]  # fmt: skip
    found = [out.find(step) for step in steps]
    assert -1 not in found and found == sorted(found), out


def test_make_run_checks_its_address_before_it_prints_how_to_log_in(checkout: Checkout) -> None:
    """`make run` on a port another process held printed "movierec is starting on …" and the login
    hints, and only then the server's "Address already in use". The address is checked first
    (``movierec serve --check``): a port taken is its one error line, with no banner under it."""
    checkout.installed()
    done = checkout.make("run", check=1)
    assert done.returncode != 0, _output(done)
    assert "Error: port taken" in done.stderr
    for line in ("movierec is starting on", "log in:", "movierec stand-in: serve"):
        assert line not in _output(done), _output(done)


def _secrets(checkout: Checkout) -> dict[str, str]:
    """The secrets file's variables, once it and the login body are checked whole and private."""
    for path in (checkout.secrets, checkout.login):
        assert path.stat().st_mode & 0o777 == 0o600, path
    values = dict(line.split("=", 1) for line in checkout.secrets.read_text().splitlines())
    assert set(values) == {"SESSION_PASSWORD", "ADMIN_PASSWORD", "MOVIEREC_JWT_SECRET"}, values
    assert json.loads(checkout.login.read_text()) == {"session_password": values["SESSION_PASSWORD"]}
    return values


def test_a_failed_secrets_step_leaves_nothing_the_next_run_would_take_for_the_secrets(
    checkout: Checkout,
) -> None:
    """The secrets were written straight into var/secrets.env: a step that failed (a PYTHON that is
    not there, a full disk, Ctrl-C after the redirect) left it empty or cut short, and make took
    it for done. Every later `make run` said "Nothing to be done" for it and the service refused to
    start for a SESSION_PASSWORD that was not set, var/login.json never written. They are written
    whole or not at all, and the next run makes them."""
    failed = checkout.make("secrets", secrets=1)
    assert failed.returncode != 0, _output(failed)
    assert not checkout.secrets.exists() and not checkout.login.exists()
    done = checkout.make("secrets")
    assert done.returncode == 0, _output(done)
    _secrets(checkout)


def test_a_removed_login_body_is_made_again_from_the_same_secrets(checkout: Checkout) -> None:
    """var/login.json was written only with var/secrets.env: once removed, `make run` still printed
    `curl ... -d @var/login.json`, and the login it showed failed for good."""
    assert checkout.make("secrets").returncode == 0
    values = _secrets(checkout)
    checkout.login.unlink()
    again = checkout.make("secrets")
    assert again.returncode == 0, _output(again)
    assert _secrets(checkout) == values  # the same password: only the login body was made again


def test_make_test_says_when_pytest_collected_nothing_and_only_then(checkout: Checkout) -> None:
    checkout.installed()
    empty = checkout.make("test", pytest=5)
    assert empty.returncode != 0
    assert NO_TESTS_HINT in empty.stderr
    failed = checkout.make("test", pytest=1)
    assert failed.returncode != 0
    assert NO_TESTS_HINT not in _output(failed)
    passed = checkout.make("test")
    assert passed.returncode == 0, _output(passed)
    assert NO_TESTS_HINT not in _output(passed)


# What make and its recipes up to a benchmark's check run, and nothing else: no wrk, no valgrind
BASIC_TOOLS = ("make", "sh", "bash", "cat", "sha1sum", "cut", "mkdir", "ln", "mv", "rm", "touch", "grep")


@pytest.mark.parametrize(
    ("target", "missing"),
    [("bench", "wrk is not installed"), ("bench-instructions", "valgrind is not installed")],
)
def test_a_benchmark_checks_what_it_needs_before_the_data_and_the_model(
    checkout: Checkout, monkeypatch: pytest.MonkeyPatch, target: str, missing: str
) -> None:
    """`make bench` (README: wrk and PostgreSQL "both checked first") and `make bench-instructions`
    (valgrind) fetched the data and trained a model, minutes on a fresh checkout, before finding
    wrk missing; bench/instructions.py then died with FileNotFoundError's traceback for valgrind.
    The check now comes before the data and model steps: one line, and nothing trained."""
    checkout.installed()
    tools = checkout.tmp / "bin"
    tools.mkdir()
    for name in BASIC_TOOLS:
        found = shutil.which(name)
        assert found is not None, name
        (tools / name).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    done = checkout.make(target)
    assert done.returncode != 0, _output(done)
    assert missing in done.stderr, _output(done)
    for step in ("fetching ml-100k", "movierec stand-in", "training", "Traceback"):
        assert step not in _output(done), _output(done)


def test_make_help_names_every_target() -> None:
    """`make` alone (help) is what a new user runs first; it named neither `make data`, `make model`
    nor `make secrets`, the steps of `make run` README's table lists, nor `make venv`."""
    (phony,) = re.findall(r"^\.PHONY: (.+)$", MAKEFILE, re.MULTILINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    shown = subprocess.run(
        ["make", "--no-print-directory"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    (others,) = re.findall(r"^other: (.+(?:\n +.+)*)$", shown, re.MULTILINE)  # and its continuation lines
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)", shown)) | set(re.findall(r"[a-z][a-z-]*", others))
    missing = [target for target in phony.split() if target != "help" and target not in named]
    assert not missing, shown


def test_make_n_still_shows_the_real_commands(checkout: Checkout) -> None:
    done = checkout.make("-n", "run")
    assert done.returncode == 0, _output(done)
    for command in (
        f"{checkout.python} -m venv {checkout.venv}",
        "-m pip install --quiet -c requirements.txt -e '.[dev]'",
        f"{checkout.venv}/bin/movierec data fetch --data-dir {checkout.tmp / 'data'}",
        f"{checkout.venv}/bin/movierec train --if-missing",
        f"exec {checkout.venv}/bin/movierec serve",
    ):
        assert command in done.stdout, done.stdout
    assert not checkout.venv.exists()


NOTICE = """
from setuptools.warnings import InformationOnly, SetuptoolsWarning
InformationOnly.emit("Editable installation.", "Please be careful with folders in your working directory")
SetuptoolsWarning.emit("Problem in editable installation.", "a real one")
"""


def test_the_editable_install_notice_alone_is_hidden() -> None:
    """setuptools' 8-line "Editable installation." notice, which pip shows for every editable install
    of a local directory, is the one warning the install leaves out; any other still shows."""
    (filters,) = re.findall(r'^QUIET_EDITABLE := PYTHONWARNINGS="([^"]+)"$', MAKEFILE, re.MULTILINE)
    assert "@$(QUIET_EDITABLE) $(PY) -m pip install --quiet -c requirements.txt -e '.[dev]'" in MAKEFILE
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    shown = subprocess.run(
        [sys.executable, "-c", NOTICE], env=env | {"PYTHONWARNINGS": filters},
        capture_output=True, text=True, timeout=60, check=True,
    ).stderr  # fmt: skip
    assert "Problem in editable installation." in shown
    assert "Editable installation." not in shown.replace("Problem in editable installation.", "")
    assert "careful with folders" not in shown
