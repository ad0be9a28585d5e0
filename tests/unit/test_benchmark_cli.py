"""Seed 003's benchmark (bench/benchmark.py): its options are checked before anything is measured."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import bench_script

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def benchmark() -> Iterator[ModuleType]:
    with bench_script("benchmark.py", "seed_benchmark") as module:
        yield module


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


@pytest.mark.parametrize(
    ("r2", "ratio", "strict", "status"),
    [(0.45, 1.0, True, 0), (0.41, 1.0, False, 1), (math.nan, 1.0, False, 1), (0.45, 2.5, True, 1),
     (0.45, math.nan, True, 1), (0.45, math.nan, False, 0)],
)  # fmt: skip
def test_the_exit_status_fails_whatever_does_not_meet_a_bar_nan_included(
    benchmark: ModuleType, monkeypatch: pytest.MonkeyPatch, r2: float, ratio: float, strict: bool, status: int
) -> None:
    """An R² of NaN (a model predicting NaN) printed "FAIL" and exited 0: ``r2 < 0.42`` is False for NaN."""
    monkeypatch.setattr(benchmark, "diabetes", lambda repeat, with_seed_settings: r2)
    monkeypatch.setattr(benchmark, "load_movielens", lambda data_dir: object())  # no data set read
    monkeypatch.setattr(benchmark, "rating_batch", lambda data, repeat: ratio)
    assert benchmark.main(["--strict"] if strict else []) == status


def test_a_refused_data_dir_is_one_line_before_anything_is_measured(
    benchmark: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data dir the loader refuses (here: part of the GroupLens files) ended Part 2 in a
    DataUnavailableError traceback, after the minutes of Part 1. It is one line, exit 2, first."""
    from tests.synthetic import partial_data_root

    expected = partial_data_root(tmp_path / "data", "grouplens", "missing")
    assert benchmark.main(["--data-dir", str(tmp_path / "data"), "--repeat", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"bench/benchmark.py: {expected}"), captured.err
    assert len(captured.err.splitlines()) == 1 and "Part 1" not in captured.out, captured


def test_an_empty_movierec_data_dir_is_unset(benchmark: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MOVIEREC_DATA_DIR=`` (a compose file's ``${VAR:-}``) is the setting unset, as the service's
    and the CLI's settings read it: read as ``Path("")`` it was the working directory."""
    read: list[str] = []
    monkeypatch.setenv("MOVIEREC_DATA_DIR", "")
    monkeypatch.setattr(benchmark, "diabetes", lambda repeat, with_seed_settings: 0.45)
    monkeypatch.setattr(benchmark, "load_movielens", lambda data_dir: read.append(data_dir))
    monkeypatch.setattr(benchmark, "rating_batch", lambda data, repeat: 1.0)
    assert benchmark.main([]) == 0
    assert read == ["data"]
