"""bench/instructions.py's bookkeeping around valgrind, with a stand-in for the app under callgrind."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import BENCH_DIR, bench_script

pytestmark = pytest.mark.unit


@pytest.fixture
def instructions(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # it imports serve_bench, as when run from bench/
    with bench_script("instructions.py", "instructions_bench") as module:
        yield module


class _Callgrind:
    """The app under valgrind (``Popen``) and ``callgrind_control`` (``run``): each dump writes the
    main thread's file with a total of 1,000 instructions."""

    pid = 4242

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.out = ""
        self.dumps = 0

    def popen(self, command: list[str], **kwargs: Any) -> _Callgrind:
        option = next(arg for arg in command if arg.startswith("--callgrind-out-file="))
        self.out = option.split("=", 1)[1].replace(".%p", "")
        self.stdin = io.StringIO()
        self.stdout: Iterator[str] = iter(self.lines)
        return self

    def run(self, command: list[str], **kwargs: Any) -> None:
        if command[1] == "-d":
            self.dumps += 1
            Path(f"{self.out}.{self.pid}.{self.dumps}-01").write_text("totals: 1000\n")

    def terminate(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return 0


def _measure(instructions: ModuleType, monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> Any:
    fake = _Callgrind(lines)
    monkeypatch.setattr(instructions.subprocess, "Popen", fake.popen)
    monkeypatch.setattr(instructions.subprocess, "run", fake.run)
    monkeypatch.setattr(instructions.time, "sleep", lambda seconds: None)
    args = argparse.Namespace(model_dir="model", data_dir="data", requests=10, repeat=1, warmup=1)
    return instructions.measure(args), Path(fake.out).parent


def test_a_run_removes_its_callgrind_dumps_and_a_failed_one_keeps_them(
    instructions: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run left its work directory (one callgrind dump per thread and phase, the SQLite
    database) in the temporary directory."""
    figures, work = _measure(instructions, monkeypatch, ["ready\n"] + ["done\n"] * 3)
    assert figures["echo"] == 100.0  # 1,000 instructions over 10 requests
    assert not work.exists()

    with pytest.raises(RuntimeError, match="ended before saying 'ready'; its stderr: ") as failed:
        _measure(instructions, monkeypatch, [])
    kept = Path(str(failed.value).rsplit("its stderr: ", 1)[1])
    assert kept.is_file()  # what valgrind said, for the failure
    instructions.shutil.rmtree(kept.parent)
