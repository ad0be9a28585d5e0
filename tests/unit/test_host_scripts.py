"""deploy-docker.py and monitor-docker.py run on the Docker host with its own ``python3``, standard
library only (docs/docker.md, docs/operations.md). An older ``python3`` than the code needs is
one line saying which Python they need, not a traceback from deep inside an import."""

from __future__ import annotations

import subprocess  # nosec B404 - the scripts, with argument lists
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# script -> the oldest Python it runs under: monitor-docker.py's log scrubber (app/monitoring/logs.py)
# uses an atomic group, new in Python 3.11; app/deploy.py evaluates `X | None` at import (3.10)
NEEDS = {"deploy-docker.py": (3, 10), "monitor-docker.py": (3, 11)}


def _run(script: str, version: tuple[int, int, int]) -> subprocess.CompletedProcess[str]:
    """``script --help`` as an interpreter that reports ``version`` runs it."""
    path = str(REPO / script)
    fake = (*version, "final", 0)
    code = (
        "import runpy, sys\n"
        f"sys.version_info = {fake!r}\n"
        f"sys.argv = [{path!r}, '--help']\n"
        f"runpy.run_path({path!r}, run_name='__main__')\n"
    )
    return subprocess.run(  # nosec B603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_a_python_too_old_for_the_script_is_one_line_saying_so(script: str) -> None:
    """Ubuntu 22.04's python3 is 3.10: ./monitor-docker.py ended in ``re.error: unknown extension
    ?> at position 19``, and Debian 11's 3.9 had deploy-docker.py end in ``TypeError: unsupported
    operand type(s) for |``, each after a page of traceback."""
    major, minor = NEEDS[script]
    result = _run(script, (major, minor - 1, 18))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"{script}: needs Python {major}.{minor} or newer, and this python3 is {major}.{minor - 1}.18: "
        f"run it with a newer one (python3.11 {script} …)"
    )


@pytest.mark.parametrize("script", sorted(NEEDS))
def test_the_script_runs_under_the_oldest_python_it_accepts(script: str) -> None:
    result = _run(script, (*NEEDS[script], 0))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script}")
