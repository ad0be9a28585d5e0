"""``movierec`` commands given paths a user plausibly gets wrong: one ``Error:`` line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import cli
from tests.synthetic import write_grouplens

pytestmark = pytest.mark.unit


def _invoke(command: list[str]) -> Result:
    return CliRunner().invoke(cli, command)


def _refused(result: Result, *fragments: str) -> None:
    """Exit 1 with click's one ``Error:`` line, not an exception escaping the command."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], result.output


def test_evaluate_reports_data_that_cannot_be_obtained_as_an_error_line(tmp_path: Path) -> None:
    """``train`` said why the data could not be had (here a refused u.data); ``evaluate`` with the
    same --data-dir died with DataUnavailableError's traceback."""
    bad = write_grouplens(tmp_path / "bad")
    (bad / "u.data").write_text((bad / "u.data").read_text() + "1\t3\t9\t880000000\n")
    result = _invoke(["evaluate", "--data-dir", str(bad), "--models", "most_rated", "--seeds", "0",
                      "--out", str(tmp_path / "report.json")])  # fmt: skip
    _refused(result, "u.data: rating must be 0.5..5.0")
