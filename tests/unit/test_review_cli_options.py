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
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert line.startswith("Error: Invalid value for") and option in line, result.output


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


@pytest.mark.parametrize("protocol", [["--protocol", "A"], []])
@pytest.mark.parametrize("name", ["report.png", "report.PNG", "report.json.png"])
def test_evaluate_refuses_an_out_its_plot_would_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: list[str], name: str
) -> None:
    """The plot is written beside the JSON report with the suffix .png: ``--out x.png`` wrote the
    report there and then the plot over it (``x-A.png`` and ``x-B.png`` with both protocols), and
    said "report: x.png  plot: x.png". Refused before the data is read or anything evaluated."""
    missing = tmp_path / "no-data"
    result = _invoke(["evaluate", "--data-dir", str(missing), "--models", "most_rated", "--seeds", "0",
                      *protocol, "--out", str(tmp_path / name)])  # fmt: skip
    _usage_error(result, "--out")
    assert not missing.exists() and sorted(tmp_path.iterdir()) == []


def test_evaluate_writes_a_report_and_a_plot_beside_it(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """--out without a suffix, and one protocol's -A added to it, never collide with the plot."""
    import json

    for protocol, out, written in (
        (["--protocol", "A"], tmp_path / "one" / "report", ("report", "report.png")),
        ([], tmp_path / "both" / "eval.json", ("eval-A.json", "eval-A.png", "eval-B.json", "eval-B.png")),
    ):
        result = _invoke(["evaluate", "--data-dir", str(synthetic_data_dir), "--models", "most_rated",
                          "--seeds", "0", *protocol, "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert sorted(path.name for path in out.parent.iterdir()) == sorted(written)
        for name in written:
            if not name.endswith(".png"):
                assert json.loads((out.parent / name).read_text())["seeds"] == [0]


@pytest.mark.parametrize("failure", ["no-copy", "interrupted"])
def test_a_failed_fetch_leaves_no_data_directory_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """``data fetch --source X`` that obtained nothing (or was stopped with Ctrl-C) created the data
    directory and its parents and left them there, empty. What was there before stays."""
    import app.recommender.data as data

    def interrupted(_target: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_from_pypi", interrupted)
    source = "pypi" if failure == "interrupted" else str(tmp_path / "no-copy")
    (tmp_path / "kept").mkdir()
    for data_dir, left in ((tmp_path / "new" / "data", tmp_path / "new"), (tmp_path / "kept", None)):
        result = _invoke(["data", "fetch", "--source", source, "--data-dir", str(data_dir)])
        assert result.exit_code == (1 if failure == "interrupted" else 3), result.output  # click's Aborted!
        if left is not None:
            assert not left.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_an_unreachable_database_is_one_error_line_with_the_drivers_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq's reason comes in two lines ("... Connection refused" then, indented, "Is the server
    running on that host and accepting TCP/IP connections?"): the command printed its ``Error:``
    line and the hint as a second line of its own. Now both on the one line, password masked."""
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", "postgresql://movierec:secret-pw@127.0.0.1:1/none")
    result = _invoke(["db", "upgrade"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: the service database cannot be reached (") and "127.0.0.1" in line
    assert "Connection refused" in line and "Is the server running on that host" in line, line
    assert "secret-pw" not in line


@pytest.mark.parametrize(
    ("command", "option"),
    [(["data", "fetch"], "--data-dir"), (["train"], "--data-dir"), (["train"], "--model-dir"),
     (["evaluate"], "--data-dir"), (["features", "build"], "--data-dir"), (["pipeline", "run"], "--data-dir"),
     (["pipeline", "run"], "--model-dir"), (["promote", "--version", "1"], "--model-dir")],
)  # fmt: skip
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_directory_option_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], option: str, value: str
) -> None:
    """``--model-dir "$MODEL_DIR"`` with the variable unset is the working directory to click:
    ``train`` wrote its bundles and ``latest`` there, ``data fetch`` its ml-100k cache, where an
    empty MOVIEREC_MODEL_DIR (MOVIEREC_DATA_DIR) means the default. Refused, naming the option."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'var' / 'service.db'}")
    models = ["--models", "most_rated"] if command[0] in ("train", "evaluate") else []
    result = _invoke([*command, option, value, *models])
    _usage_error(result, option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_data_source_is_a_usage_error_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """``data fetch --source "$SOURCE"`` with the variable unset read the working directory as the
    source: ml-100k files there (a shell sitting in someone's copy) were copied into the cache,
    and elsewhere the failure said "tried : . is not an ml-100k directory". Refused, as an empty
    --data-dir is, and nothing is fetched."""
    from tests.synthetic import write_grouplens

    monkeypatch.chdir(write_grouplens(tmp_path / "cwd"))
    result = _invoke(["data", "fetch", "--source", value, "--data-dir", str(tmp_path / "data")])
    _usage_error(result, "--source")
    assert not (tmp_path / "data").exists()
