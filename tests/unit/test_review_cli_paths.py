"""``movierec`` commands given paths a user plausibly gets wrong: one ``Error:`` line, never a traceback."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from app.cli import cli
from tests.helpers import free_port
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


def _no_work(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError(f"{name} ran although its output could not be written")

    monkeypatch.setattr(module, name, refuse)


def test_evaluate_reports_data_that_cannot_be_obtained_as_an_error_line(tmp_path: Path) -> None:
    """``train`` said why the data could not be had (here a refused u.data); ``evaluate`` with the
    same --data-dir died with DataUnavailableError's traceback."""
    bad = write_grouplens(tmp_path / "bad")
    (bad / "u.data").write_text((bad / "u.data").read_text() + "1\t3\t9\t880000000\n")
    result = _invoke(["evaluate", "--data-dir", str(bad), "--models", "most_rated", "--seeds", "0",
                      "--out", str(tmp_path / "report.json")])  # fmt: skip
    _refused(result, "u.data: rating must be 0.5..5.0")


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_evaluate_refuses_an_unwritable_out_before_evaluating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--out naming a directory, or a path under a file, came out as IsADirectoryError or
    NotADirectoryError's traceback, after the whole evaluation had run."""
    import app.recommender.evaluation as evaluation

    data = write_grouplens(tmp_path / "data")
    (tmp_path / "file").write_text("")
    out = tmp_path if where == "directory" else tmp_path / "file" / "report.json"
    _no_work(monkeypatch, evaluation, "evaluate")
    result = _invoke(["evaluate", "--data-dir", str(data), "--models", "most_rated", "--seeds", "0",
                      "--out", str(out)])  # fmt: skip
    _refused(result, "--out", str(out))


@pytest.mark.parametrize("out", ["", "."])
def test_evaluate_refuses_an_empty_out_as_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str
) -> None:
    """An empty --out (``--out "$OUT"`` with OUT unset) or ``.`` is the current directory: with both
    protocols, naming their two reports ("-A", "-B" added to its name) died with ValueError's
    traceback, "PosixPath('.') has an empty name"."""
    import app.recommender.evaluation as evaluation

    data = write_grouplens(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch, evaluation, "evaluate")
    result = _invoke(["evaluate", "--data-dir", str(data), "--models", "most_rated", "--seeds", "0",
                      "--out", out])  # fmt: skip
    _refused(result, "--out", "is a directory")


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_train_refuses_an_unwritable_model_dir_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """--model-dir naming a file (or a path under one) was found out only when the bundle was
    written, after minutes of training, as FileExistsError or NotADirectoryError's traceback."""
    import app.recommender.training as training

    data = write_grouplens(tmp_path / "data")
    (tmp_path / "file").write_text("")
    model_dir = tmp_path / "file" if where == "a-file" else tmp_path / "file" / "model"
    _no_work(monkeypatch, training, "train")
    for extra in ([], ["--if-missing"]):
        result = _invoke(["train", "--data-dir", str(data), "--model-dir", str(model_dir),
                          "--models", "most_rated", "--seeds", "0", *extra])  # fmt: skip
        _refused(result, "--model-dir", str(model_dir))


def test_db_upgrade_reports_an_unreachable_database_as_an_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """``features build`` said the database could not be reached; ``db upgrade`` (what an operator
    runs first) died with DatabaseUnavailableError's traceback. The password is never shown."""
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", "postgresql://movierec:secret-pw@127.0.0.1:1/none")
    result = _invoke(["db", "upgrade"])
    _refused(result, "the service database cannot be reached", "127.0.0.1:1")
    assert "secret-pw" not in result.output


@pytest.mark.parametrize("command", [["db", "upgrade"], ["features", "build"]])
def test_a_sqlite_database_whose_directory_cannot_be_made_is_an_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """A SQLite file under a file (or anywhere its directory cannot be created) escaped from the
    engine's set-up as a NotADirectoryError traceback."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'file' / 'movierec.db'}")
    monkeypatch.setenv("MOVIEREC_FEATURES_ROOT", str(tmp_path / "features"))
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(write_grouplens(tmp_path / "data")))
    result = _invoke(command)
    _refused(result, "the service database cannot be reached", str(tmp_path / "file"))
    assert not (tmp_path / "features" / "LATEST").exists()


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("MOVIEREC_DATABASE_URL", "notaurl"),
        ("MOVIEREC_DATABASE_URL", "postgresql://movierec:secret-pw@db:notaport/movierec"),
        ("MOVIEREC_DATABASE_URL", "postgresq://movierec:secret-pw@db/movierec"),
        ("MOVIEREC_REDIS_URL", "localhost:6379"),
        ("MOVIEREC_REDIS_URL", "http://:secret-pw@cache:6379/0"),
    ],
)
def test_a_malformed_database_or_redis_url_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, url: str
) -> None:
    """``python main.py``, ``movierec serve`` and ``db upgrade`` died with SQLAlchemy's ArgumentError,
    int()'s ValueError or redis' ValueError traceback for a URL with a typo; it is now refused with
    the other settings, naming the variable and never showing the URL (it may hold a password)."""
    import main as seed_main
    from app.config import ConfigurationError, load_settings

    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigurationError, match=variable.removeprefix("MOVIEREC_").lower()) as caught:
        load_settings()
    assert "secret-pw" not in str(caught.value)
    monkeypatch.setenv("SESSION_PASSWORD", "a-session-password")
    assert seed_main.main(["--debug", "--port", str(free_port())]) == 2  # not :5000, `make run`'s
    error = capsys.readouterr().err
    assert error.startswith("movierec: invalid setting") and "secret-pw" not in error, error
    if variable == "MOVIEREC_DATABASE_URL":
        _refused(_invoke(["db", "upgrade"]), "invalid setting database_url")


def test_an_empty_redis_url_still_means_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file and CI set MOVIEREC_REDIS_URL to "" for "no Redis": not a malformed URL."""
    from app.config import load_settings

    monkeypatch.setenv("MOVIEREC_REDIS_URL", "")
    assert not load_settings().redis_url


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_data_leaves_no_output_directory_behind(tmp_path: Path, command: str) -> None:
    """``train`` and ``evaluate`` created --model-dir (--out's directory) before reading the data:
    a run refused for its data left an empty directory behind."""
    bad = write_grouplens(tmp_path / "bad")
    (bad / "u.data").write_text((bad / "u.data").read_text() + "1\t3\t9\t880000000\n")
    output = tmp_path / "new" / "out"
    where = ["--model-dir", str(output)] if command == "train" else ["--out", str(output / "report.json")]
    result = _invoke([command, "--data-dir", str(bad), "--models", "most_rated", "--seeds", "0", *where])
    _refused(result, "u.data: rating must be 0.5..5.0")
    assert not (tmp_path / "new").exists()


def test_data_and_model_dirs_default_to_their_settings(
    synthetic_data_dir: Path, personal_model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline run, features build and promote read MOVIEREC_DATA_DIR and MOVIEREC_MODEL_DIR, but
    data fetch, train and evaluate defaulted to ./data and ./model: in the pipeline image a plain
    `movierec train` wrote into /app/model, not the model store volume the service reads."""
    layout = next(path for path in synthetic_data_dir.rglob("u.data")).parent
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(layout))
    monkeypatch.setenv("MOVIEREC_MODEL_DIR", str(personal_model_store))
    fetched = CliRunner().invoke(cli, ["data", "fetch", "--source", "nowhere"])
    assert fetched.exit_code == 0, fetched.output
    assert fetched.stdout.startswith(f"{layout}: "), fetched.stdout
    trained = CliRunner().invoke(cli, ["train", "--if-missing"])
    assert trained.exit_code == 0, trained.output
    assert trained.stdout.strip() == f"{(personal_model_store / 'latest').resolve()} (existing)"


@pytest.mark.parametrize("entry", ["movierec serve", "python main.py"])
@pytest.mark.parametrize("where", ["unreachable", "sqlite-under-a-file"])
def test_the_development_server_reports_a_database_it_cannot_use_as_an_error_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    entry: str,
    where: str,
) -> None:
    """``db upgrade`` said the database could not be reached; ``movierec serve`` (``make run``) and
    ``python main.py`` with the same MOVIEREC_DATABASE_URL (PostgreSQL not running, a SQLite file
    under a file) died with DatabaseUnavailableError's (or FileExistsError's) traceback from the
    schema upgrade at start. Now one error line naming the database, password masked; exit 1."""
    import main

    if where == "unreachable":
        url, named = "postgresql://movierec:secret-pw@127.0.0.1:1/none", "127.0.0.1:1"
    else:
        (tmp_path / "file").write_text("")
        url, named = f"sqlite:///{tmp_path / 'file' / 'movierec.db'}", str(tmp_path / "file")
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", url)
    monkeypatch.setenv("SESSION_PASSWORD", "session-pw")
    monkeypatch.setenv("MOVIEREC_JWT_SECRET", "j" * 48)
    monkeypatch.setenv("ML_MODEL_PATH", str(tmp_path / "model"))
    monkeypatch.setattr("app.run_development_server", lambda *args: pytest.fail("the server was started"))
    monkeypatch.setattr(main, "run_development_server", lambda *args: pytest.fail("the server was started"))
    port = str(free_port())
    if entry == "movierec serve":
        result = _invoke(["serve", "--port", port])
        _refused(result, "the service database cannot be reached", named)
        assert "secret-pw" not in result.output
        return
    assert main.main(["--port", port]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "secret-pw" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("movierec: ")]
    assert "the service database cannot be reached" in line and named in line, err


@pytest.mark.parametrize("command", [["data", "fetch"], ["train", "--if-missing"], ["features", "build"]])
def test_a_data_dir_that_is_a_file_is_called_not_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """--data-dir naming a file was refused as "the data root FILE cannot hold ml-100k: File exists",
    mkdir's words for a name that is taken, which read as if the data were there already (a path
    under a file said "Not a directory", as train's --model-dir says of a file)."""
    import app.recommender.data as data

    _no_work(monkeypatch, data, "_from_pypi")
    _no_work(monkeypatch, data, "_from_grouplens")
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'service.db'}")
    monkeypatch.setenv("MOVIEREC_FEATURES_ROOT", str(tmp_path / "features"))
    (tmp_path / "file").write_text("")
    model_dir = ["--model-dir", str(tmp_path / "model")] if command[0] == "train" else []
    result = _invoke([*command, "--data-dir", str(tmp_path / "file"), *model_dir])
    _refused(result, f"the data root {tmp_path / 'file'} cannot hold ml-100k: Not a directory")


def test_replay_rejected_names_a_journal_this_user_may_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str
) -> None:
    """Run by another user than the service's, ``feedback replay-rejected`` printed Python's
    ``Error: [Errno 13] Permission denied: '<path>'``: neither that the path is the feedback
    journal nor what to do. Run here in a forked child as uid 65534, which cannot enter the
    root-owned test directory."""
    import os

    from tests.helpers import in_forked_child

    journal = tmp_path / "journal"
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", postgres_url)
    monkeypatch.setenv("MOVIEREC_FEEDBACK_JOURNAL_DIR", str(journal))
    # as root first: nothing to replay, and what the command imports is imported for the child
    assert "no rejected scores" in _invoke(["feedback", "replay-rejected"]).output
    tmp_path.chmod(0o700)
    read, write = os.pipe()

    def as_another_user() -> bool:
        os.close(read)
        os.setgid(65534)
        os.setuid(65534)
        result = _invoke(["feedback", "replay-rejected"])
        os.write(write, f"{result.exit_code}\n{result.output}".encode())
        return True

    assert in_forked_child(as_another_user) == 0
    os.close(write)
    with os.fdopen(read) as pipe:
        code, output = pipe.read().split("\n", 1)
    assert code == "1" and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert "[Errno" not in line, line
    assert f"the feedback journal {journal}/" in line and "Permission denied" in line, line
    assert "run it as the service's user" in line, line


@pytest.mark.parametrize(
    ("command", "module", "name"),
    [
        (["train", "--models", "most_rated", "--seeds", "0", "--model-dir"], "app.recommender.training",
         "train"),
        (["evaluate", "--models", "most_rated", "--seeds", "0", "--out"], "app.recommender.evaluation",
         "evaluate"),
        (["data", "fetch", "--source", "pypi", "--data-dir"], "app.recommender.data", "_from_pypi"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_command_stopped_by_sigterm_leaves_no_directory_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_data_dir: Path,
    command: list[str], module: str, name: str, signum: int,
) -> None:  # fmt: skip
    """Ctrl-C during ``train``, ``evaluate`` or ``data fetch`` removed the directories the command
    had created for its result and said ``Aborted!``; SIGTERM (a CI job's timeout, docker stop)
    or SIGHUP (the terminal closed) killed it silently and left them, empty. Now they stop it as
    Ctrl-C does, as they stop ``features build``. In a forked child: unhandled, the signal kills
    the process it is sent to."""
    import importlib
    import os

    from tests.helpers import in_forked_child

    def stopped(*_args: Any, **_kwargs: Any) -> Any:
        os.kill(os.getpid(), signum)
        raise AssertionError("still running after the signal")

    monkeypatch.setattr(importlib.import_module(module), name, stopped)
    target = tmp_path / "new" / ("data" if command[0] == "data" else "result")
    if command[0] == "evaluate":
        target = target / "report.json"
    data_dir = [] if command[0] == "data" else ["--data-dir", str(synthetic_data_dir)]

    def run() -> bool:
        result = _invoke([*command, str(target), *data_dir])
        return result.exit_code == 1 and "Aborted!" in result.output

    assert in_forked_child(run, timeout=120) == 0
    assert not (tmp_path / "new").exists()
