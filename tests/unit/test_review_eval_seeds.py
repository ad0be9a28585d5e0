"""`movierec train` and `movierec evaluate` --seeds: a usage error before any data or model is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_negative_seed_is_a_usage_error(command: str, tmp_path: Path) -> None:
    """It passed --seeds and crashed in numpy's default_rng with a traceback, after loading the data."""
    from app.cli import cli

    missing = tmp_path / "no-data"  # never read: the option is refused first (else a fetch would start)
    result = CliRunner().invoke(
        cli, [command, "--data-dir", str(missing), "--seeds=0,-1", "--models", "most_rated"]
    )
    assert result.exit_code == 2, result.output
    assert "--seeds" in result.output and "non-negative" in result.output
    assert not missing.exists()


def test_evaluate_runs_each_seed_once(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """--seeds 5,5,6 evaluated split 5 twice and weighted it double in the mean and sd."""
    import json

    from app.cli import cli

    out = tmp_path / "report.json"
    args = ["evaluate", "--data-dir", str(synthetic_data_dir), "--models", "most_rated", "--protocol", "A"]
    args += ["--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--seeds", "5,5,6"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["seeds"] == [5, 6]
    assert sorted(report["models"]["most_rated"]["per_seed"]) == ["5", "6"]


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_raw_files_that_do_not_parse_are_one_error_line(command: str, tmp_path: Path) -> None:
    """train reported them in a line; evaluate let DataFormatError out as a traceback."""
    from app.cli import cli

    data = tmp_path / "data"
    data.mkdir()
    for name in ("u.data", "u.item", "u.user"):
        (data / name).write_text("")
    args = [command, "--data-dir", str(data), "--seeds", "0", "--models", "most_rated"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: u.data: no rows" in result.output
