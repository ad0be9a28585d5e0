"""Seed 003's benchmark (bench/benchmark.py): its options are checked before anything is measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_benchmark", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("repeat", ["0", "-3", "x"])
def test_a_repeat_that_is_not_a_positive_integer_is_a_usage_error(
    benchmark: ModuleType, repeat: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--repeat 0`` measured the first model, then ended in a traceback (min() of no timings)."""
    with pytest.raises(SystemExit) as exited:
        benchmark.main(["--repeat", repeat, "--skip-ratings"])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert "--repeat" in captured.err and "Part 1" not in captured.out
