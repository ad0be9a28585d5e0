"""``movierec`` options given values a user plausibly gets wrong: a usage error naming the option
(exit 2) before any data is loaded or model trained, never a run doing something else."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import cli

pytestmark = pytest.mark.unit


def _invoke(command: list[str]) -> Result:
    return CliRunner().invoke(cli, command)


def _usage_error(result: Result, option: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert f"Invalid value for {option}" in result.output, result.output


@pytest.mark.parametrize("value", [",", " ", "", " , "])
@pytest.mark.parametrize(
    ("command", "option"),
    [(["train"], "--models"), (["evaluate"], "--models"), (["pipeline", "run"], "--candidates"),
     (["train"], "--seeds"), (["evaluate"], "--seeds"), (["pipeline", "run"], "--seeds")],
)  # fmt: skip
def test_a_list_option_naming_nothing_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], option: str, value: str
) -> None:
    """``train --models ","`` (or " ", or "" from a variable left empty) read as --models not given
    and trained every default model; ``pipeline run --candidates ,`` and ``--seeds ""`` ran the
    configured ones. The data directory is never looked at (else a fetch would start)."""
    missing = tmp_path / "no-data"
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(tmp_path / "var"))
    model_dir = [] if command == ["evaluate"] else ["--model-dir", str(tmp_path / "model")]
    result = _invoke([*command, "--data-dir", str(missing), *model_dir, option, value])
    _usage_error(result, option)
    assert not missing.exists() and not (tmp_path / "model").exists() and not (tmp_path / "var").exists()
