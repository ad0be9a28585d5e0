"""``movierec`` given settings and places a user plausibly gets wrong: one ``Error:`` line (or the
usage error), never a traceback, and its output where the settings say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_review_cli_paths import _invoke, _refused

pytestmark = pytest.mark.unit


def test_evaluate_writes_its_default_reports_under_the_var_directory(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow, Metaflow, the pipeline's lock and the feedback journal live under MOVIEREC_VAR_DIR;
    ``evaluate``'s reports went to ./var/reports whatever it said (in the image, into the working
    directory rather than the var volume). They go to <MOVIEREC_VAR_DIR>/reports now; --out wins."""
    monkeypatch.chdir(tmp_path)
    var = tmp_path / "elsewhere" / "var"
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(var))
    args = ["evaluate", "--data-dir", str(synthetic_data_dir), "--models", "most_rated", "--seeds", "0"]
    result = _invoke([*args, "--protocol", "A"])
    assert result.exit_code == 0, result.output
    report = var / "reports" / "protocol-A.json"
    assert json.loads(report.read_text())["protocol"] == "A"
    assert (var / "reports" / "protocol-A.png").is_file()
    assert f"report: {report}" in result.output
    assert not (tmp_path / "var").exists()

    monkeypatch.setenv("MOVIEREC_VAR_DIR", "")  # set to nothing: the default, var
    result = _invoke([*args, "--protocol", "B"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "var" / "reports" / "protocol-B.json").is_file()

    result = _invoke([*args, "--protocol", "A", "--out", "mine.json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine.json").is_file()


def test_a_database_url_whose_driver_is_not_installed_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MOVIEREC_DATABASE_URL=mysql://…`` passed the settings (SQLAlchemy knows the dialect), then
    ``db upgrade``, ``serve`` and ``python main.py`` died with ModuleNotFoundError's traceback
    (No module named 'MySQLdb') when they first opened it. Refused with the other bad URLs now,
    naming the missing driver and never the URL (it may carry a password)."""
    import importlib.util

    from app.config import ConfigurationError, load_settings

    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("the MySQL driver is installed here")
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", "mysql://movierec:secret-pw@db/movierec")
    monkeypatch.delenv("MOVIEREC_DATABASE_URL_FILE", raising=False)
    with pytest.raises(ConfigurationError, match=r"database_url.*MySQLdb.*not installed") as caught:
        load_settings(testing=True)
    assert "secret-pw" not in str(caught.value)
    result = _invoke(["db", "upgrade"])
    _refused(result, "invalid setting database_url", "MySQLdb")
    assert "secret-pw" not in result.output


@pytest.fixture(params=["not-a-database", "no-create-grant"])
def refusing_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A service database that answers and refuses the schema: a SQLite "database" that is some
    other file, or a PostgreSQL role without CREATE on the schema (PostgreSQL 15's default for a
    role that does not own the database). Yields its URL and the reason the driver gives."""
    if request.param == "not-a-database":
        path = tmp_path / "service.db"
        path.write_text("1\t2\t5\t880000000\n" * 200)
        yield f"sqlite:///{path}", "file is not a database"
        return
    import uuid

    import psycopg

    admin = request.getfixturevalue("postgres_admin_url")
    url = request.getfixturevalue("postgres_url")
    role = f"movierec_nocreate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'REVOKE CREATE ON SCHEMA public FROM PUBLIC, "{role}"')
    host, database = url.split("@", 1)[1].rsplit("/", 1)
    try:
        yield f"postgresql://{role}:secret-pw@{host}/{database}", "permission denied for schema public"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_database_that_refuses_the_schema_is_one_error_line(
    refusing_database: tuple[str, str],
    model_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database that answers but refuses the migration was a page of traceback from ``db
    upgrade``, ``features build``, ``serve`` and ``python main.py`` (sqlalchemy.exc.DatabaseError
    or ProgrammingError: only an OperationalError, the database not answering, was one line).
    One line naming the database (password masked) and the driver's reason now, exit 1."""
    import main as seed_main
    from tests.helpers import free_port

    url, reason = refusing_database
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", url)
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MOVIEREC_TESTING", "true")
    monkeypatch.setenv("ML_MODEL_PATH", str(model_store))
    for command in (["db", "upgrade"], ["serve", "--port", str(free_port())]):
        result = _invoke(command)
        _refused(result, "the service database cannot be used (", reason)
        assert "secret-pw" not in result.output
    assert seed_main.main(["--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "secret-pw" not in err
    assert "movierec: the service database cannot be used (" in err and reason in err, err


@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_pipeline_run_with_a_var_directory_it_cannot_make_is_one_error_line(
    synthetic_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """MOVIEREC_VAR_DIR naming a file (or a path under one) made ``pipeline run`` die with
    NotADirectoryError's traceback from the launcher's scratch directory. One line naming the
    setting and the path now, before any flow is launched."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    var = blocker if where == "a-file" else blocker / "var"
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(var))
    monkeypatch.setenv("MOVIEREC_FEATURES_ROOT", str(tmp_path / "features"))
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'service.db'}")
    model = tmp_path / "model"
    command = ["pipeline", "run", "--data-dir", str(synthetic_data_dir), "--model-dir", str(model)]
    result = _invoke([*command, "--candidates", "most_rated", "--seeds", "0"])
    _refused(result, "MOVIEREC_VAR_DIR", str(var), "Not a directory")
    assert not model.exists()


def test_a_report_cut_short_leaves_the_earlier_one_whole(synthetic_data_dir: Path, tmp_path: Path) -> None:
    """``evaluate`` wrote its JSON report and its PNG in place: a write cut short (a full disk, a
    file-size limit, Ctrl-C while the plot was saved) left a truncated report under the final name,
    over the complete one of an earlier run, which readers then took for a report. Each file is
    written beside its name and renamed now: the earlier pair stays whole, and no partial file is
    left. The child process writes under a file-size limit smaller than the report (EFBIG)."""
    import resource
    import signal

    from tests.helpers import in_forked_child

    out = tmp_path / "reports" / "eval.json"
    args = ["evaluate", "--data-dir", str(synthetic_data_dir), "--protocol", "A", "--out", str(out)]
    first = _invoke([*args, "--models", "most_rated", "--seeds", "0"])
    assert first.exit_code == 0, first.output
    before = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    assert sorted(before) == ["eval.json", "eval.png"]

    def cut_short() -> bool:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before["eval.json"]) // 2,) * 2)
        result = _invoke([*args, "--models", "most_rated,most_liked", "--seeds", "0,1"])
        return result.exit_code == 1 and "File too large" in result.output

    assert in_forked_child(cut_short, timeout=120) == 0
    after = {path.name: path.read_bytes() for path in out.parent.iterdir()}
    assert after == before
    json.loads(after["eval.json"])


@pytest.mark.parametrize("version", ["abc", "v3", "0", "-1", "", "1.5"])
def test_promote_a_version_that_is_no_version_number_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    """``promote --version abc`` (or ``v3``, as ``pipeline versions`` prints it, or ``0``, or an
    empty variable) opened the registry, creating its SQLite store under the var directory with
    MLflow's own log lines, and failed with "movierec has no version abc", exit 1. Registered
    versions are numbered from 1: anything else is a usage error naming --version, exit 2, and
    nothing is created."""
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(tmp_path / "var"))
    result = _invoke(["promote", "--version", version, "--no-reload", "--model-dir", str(tmp_path / "model")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert "--version" in line and "version number" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_body_limit_that_allows_no_body_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """MOVIEREC_MAX_BODY_BYTES had no bound: 0 or a negative number started the service, and every
    request with a body (each login, each score) was a 413, the service unusable and nothing said.
    Refused at start now, as every other number setting out of range is."""
    from app.config import ConfigurationError, load_settings

    monkeypatch.setenv("MOVIEREC_MAX_BODY_BYTES", value)
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'service.db'}")
    with pytest.raises(ConfigurationError, match="max_body_bytes"):
        load_settings(testing=True)
    _refused(_invoke(["db", "upgrade"]), "invalid setting max_body_bytes")
    assert not (tmp_path / "service.db").exists()


def test_sql_over_a_root_that_is_a_file_says_so_rather_than_no_snapshot(tmp_path: Path) -> None:
    """``movierec sql --root X`` with X a file (or a directory this user may not enter: fsspec's
    ``exists`` is False for both) said "has no snapshot yet: run `movierec features build`",
    sending the operator to build a store that was there, or could not be. Only a missing LATEST
    says that now; one that cannot be read is the "cannot be read" line naming why."""
    root = tmp_path / "features"
    root.write_text("")
    result = _invoke(["sql", "--root", str(root), "select 1"])
    _refused(result, f"the features store {root} cannot be read", "Not a directory")
    assert "no snapshot" not in result.output
    result = _invoke(["sql", "--root", str(tmp_path / "missing"), "select 1"])
    _refused(result, "has no snapshot yet")


def test_a_report_to_a_special_file_or_a_link_writes_through_it(
    synthetic_data_dir: Path, tmp_path: Path
) -> None:
    """Written beside its name and renamed, ``--out`` naming a FIFO (or ``/dev/null``, as root:
    ``--out /dev/null`` to keep only the table) had the special file replaced by a regular one,
    and a symlink to the reports kept elsewhere replaced by a file. The rename is made at the
    link's target now, and a file that is no regular file is written to as it is."""
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    args = ["evaluate", "--data-dir", str(synthetic_data_dir), "--protocol", "A", "--models", "most_rated"]
    result = _invoke([*args, "--seeds", "0", "--out", str(fifo)])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(received[0])["protocol"] == "A"

    kept = tmp_path / "kept" / "report.json"
    kept.parent.mkdir()
    kept.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(kept)
    result = _invoke([*args, "--seeds", "0", "--out", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and json.loads(kept.read_text())["protocol"] == "A"
    assert sorted(path.name for path in kept.parent.iterdir()) == ["report.json"]
