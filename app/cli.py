"""The ``movierec`` command: every Makefile target and the scheduler call it."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from app import stop_signals
from app.listener import MAX_PORT
from app.monitoring.logs import LOG_LEVELS
from app.number_options import number_problem
from app.pipeline.commands import DirectoryPath
from app.recommender.seeds import REFERENCE_SEED, STANDARD_SEEDS, parse_seeds

if TYPE_CHECKING:
    from app.recommender.data import MovieLens


_Command = TypeVar("_Command", bound=Callable[..., Any])


def _stopped_like_ctrl_c(command: _Command) -> _Command:
    """A command that SIGTERM (a CI job's timeout, docker stop) and SIGHUP (the terminal closed)
    stop as Ctrl-C does: the directories it created for its result are removed again
    (``removed_unless_done``, a fetch's staging) and it says ``Aborted!`` (exit 1). They killed
    ``train``, ``evaluate`` and ``data fetch`` on the spot, which left those directories behind."""

    @functools.wraps(command)
    def stoppable(*args: Any, **kwargs: Any) -> Any:
        with stop_signals.like_ctrl_c():
            return command(*args, **kwargs)

    return stoppable  # type: ignore[return-value]


def _seeds(value: str) -> list[int]:
    """--seeds checked before the data is loaded (app.recommender.seeds.parse_seeds): none, a
    negative one or garbage would crash after loading it; a repeat counts once."""
    try:
        return parse_seeds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from exc


def _at_least(minimum: float) -> Callable[[click.Context, click.Parameter, float], float]:
    """A click callback: a finite number >= ``minimum`` (app.number_options), else BadParameter."""

    def check(_ctx: click.Context, param: click.Parameter, value: float) -> float:
        problem = number_problem(value, minimum)
        if problem is not None:
            raise click.BadParameter(f"{value:g} {problem}", param=param)
        return value

    return check


def _output_directory(directory: Path, option: str, given: Path | None = None) -> None:
    """Create ``directory`` (where ``option``, given as ``given``, writes) before the minutes of work
    whose result goes there: a file in its way, or a directory that cannot be created or written,
    is one ``Error:`` line now rather than a traceback once the work is done. Called once the
    input data loaded, so that a run refused for its data creates nothing."""
    from app.recommender.data import mkdir_failure

    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(directory))
    except OSError as exc:
        where = f"{exc.filename or directory}: {mkdir_failure(exc)}"
        raise click.ClickException(f"{option} {given or directory} cannot be written: {where}") from exc


def _models(value: str | None) -> list[str] | None:
    """Model names from ``--models``, checked before any data is loaded or model trained:
    a typo is a usage error with the known names, not a traceback minutes into a run; none
    (``","``) is one too, not every default model."""
    from app.pipeline.commands import listed_names
    from app.recommender.models import CANDIDATES

    names = listed_names(value, "--models")
    unknown = [name for name in names or () if name not in CANDIDATES]
    if unknown:
        raise click.BadParameter(
            f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(CANDIDATES))}",
            param_hint="--models",
        )
    return names


@click.group()
@click.option(
    "--log-level",
    # a choice, so a typo is a usage error naming the levels, not logging's ValueError traceback
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Logging level.",
)
def cli(log_level: str) -> None:
    """movierec: data, training, evaluation and serving of the recommendation service."""
    from app.monitoring.logs import configure_logging

    # JSON lines on stderr, so a command's own output (a bundle path, a table) stays clean on stdout;
    # `movierec serve` switches the same handler to stdout, where a service logs.
    configure_logging(log_level.upper(), stream="stderr")


# ----------------------------------------------------------------------------- data


# The data root and the model store default to their settings' variables, as they do for pipeline
# run, features build and promote (in the pipeline image, a plain `movierec train` wrote into
# ./model, not the model store volume the service reads); an option given wins.
_DATA_ROOT = click.option(
    "--data-dir", type=DirectoryPath(), default=Path("data"), envvar="MOVIEREC_DATA_DIR",
    show_default=True, show_envvar=True,
)  # fmt: skip
_MODEL_STORE = click.option(
    "--model-dir", type=DirectoryPath(), default=Path("model"), envvar="MOVIEREC_MODEL_DIR",
    show_default=True, show_envvar=True,
)  # fmt: skip


@cli.group()
def data() -> None:
    """Get the MovieLens ml-100k data."""


NOT_OBTAINED_STATUS = 3
"""``data fetch``'s exit status when ml-100k could not be obtained (NotObtainedError): no source
provided the files and none was refused. The Makefile's ``data`` step says how to take it from a
copy (DATA_SOURCE) on this status alone; refused data exits 1, as every other error."""


class _NotObtained(click.ClickException):
    exit_code = NOT_OBTAINED_STATUS


def _sources(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """``--source``'s values; an empty one (``--source "$SOURCE"`` with the variable unset) is a
    usage error, as an empty ``--data-dir`` is: it read as the working directory, whose ml-100k
    files were copied into the cache."""
    if any(not value.strip() for value in values):
        raise click.BadParameter(
            "is empty; give pypi, grouplens or a PATH (or leave the option out for the defaults)", param=param
        )
    return values


@data.command("fetch")
@click.option(
    "--source",
    "sources",
    multiple=True,
    callback=_sources,
    help="pypi, grouplens or a local PATH (repeatable; tried in order).",
)
@_DATA_ROOT
@_stopped_like_ctrl_c
def data_fetch(sources: tuple[str, ...], data_dir: Path) -> None:
    """Cache ml-100k under the data root (default sources: pypi, then grouplens); a data root that
    holds the files itself is used as is, as train and features build use it.

    Exits 3 when ml-100k could not be obtained (no source provided the files, none was refused),
    1 when data was refused (the data root's, the cache's or a source's files) or on any other error.
    """
    from app.recommender.data import (
        DataUnavailableError,
        NotObtainedError,
        detect_layout,
        fetch,
        load_directory,
    )

    try:  # a file of the layout that is not a file (a directory, a dangling symlink): named, no download
        path = data_dir if detect_layout(data_dir) else fetch(data_dir, sources or ("pypi", "grouplens"))
    except NotObtainedError as exc:
        raise _NotObtained(str(exc)) from exc
    except DataUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc
    try:  # a cache with every file is kept as is: cut short or edited, it is refused here
        loaded = load_directory(path)
    except DataUnavailableError as exc:
        # the cache alone is fetch's to remove: the data root's own files are the user's to fix
        again = "" if path == data_dir else f"; remove {path} and run movierec data fetch again"
        raise click.ClickException(f"{path}: {exc}{again}") from exc
    click.echo(
        f"{path}: {len(loaded.ratings)} ratings, {len(loaded.users)} users, {len(loaded.items)} movies"
    )


# ----------------------------------------------------------------------------- models


def _load_data(data_dir: Path) -> MovieLens:
    """ml-100k for train and evaluate; refused, missing or unparsable raw files are one error
    line (DataUnavailableError, DataFormatError), not a traceback."""
    from app.recommender.data import DataUnavailableError, load_movielens

    try:
        return load_movielens(data_dir)
    except DataUnavailableError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@_DATA_ROOT
@_MODEL_STORE
@click.option(
    "--models", "models", default=None, help="Comma-separated candidate names (default: all defaults)."
)
@click.option(
    "--seeds",
    default=",".join(map(str, STANDARD_SEEDS)),
    show_default=True,
    help="Protocol-A split seeds for selection.",
)
@click.option(
    "--if-missing", is_flag=True, help="Do nothing when the model dir already has a 'latest' bundle."
)
@_stopped_like_ctrl_c
def train(data_dir: Path, model_dir: Path, models: str | None, seeds: str, if_missing: bool) -> None:
    """Train candidates, pick the best by protocol-A NDCG@10, write a bundle; print its path."""
    from app.recommender.bundle import LATEST, MANIFEST
    from app.recommender.data import removed_unless_done
    from app.recommender.evaluation import TooLittleDataError
    from app.recommender.models import DEFAULT_CANDIDATES
    from app.recommender.training import summary_line
    from app.recommender.training import train as run_training

    if if_missing and (model_dir / LATEST / MANIFEST).is_file():
        click.echo(f"{(model_dir / LATEST).resolve()} (existing)")
        return
    names, seed_list = _models(models) or DEFAULT_CANDIDATES, _seeds(seeds)
    data = _load_data(data_dir)  # first: a run refused for its data leaves no directory behind
    with removed_unless_done(model_dir):  # ... nor one too little to evaluate, or stopped (Ctrl-C)
        _output_directory(model_dir, "--model-dir")
        try:
            result = run_training(data, model_dir, names, seed_list)
        except TooLittleDataError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(summary_line(result), err=True)
    click.echo(str(result.path))


def _report_paths(out: Path | None, protocols: list[str]) -> dict[str, Path]:
    """Each protocol's JSON report path: ``<MOVIEREC_VAR_DIR>/reports/protocol-<P>.json`` by
    default (``var``, as every other file the commands keep there: it was ``./var`` whatever the
    setting said); ``--out`` itself for one protocol, and for both ``--out``'s name with ``-A`` /
    ``-B`` before its suffix (``eval.json``: ``eval-A.json``, ``eval-B.json``), so each report
    keeps the one-protocol shape."""
    if out is None:
        from app.pipeline.commands import settings_for_cli

        reports = Path(settings_for_cli().var_dir) / "reports"
        return {p: reports / f"protocol-{p}.json" for p in protocols}
    if len(protocols) == 1:
        return {protocols[0]: out}
    return {p: out.with_name(f"{out.stem}-{p}{out.suffix}") for p in protocols}


@cli.command()
@_DATA_ROOT
@click.option(
    "--protocol", type=click.Choice(["A", "B"]), default=None, help="Run one protocol (default: A and B)."
)
@click.option("--seeds", default=",".join(map(str, (*STANDARD_SEEDS, REFERENCE_SEED))), show_default=True)
@click.option(
    "--models", "models", default=None, help="Comma-separated model names (default: all candidates)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON report path (a PNG is written beside it; default: <MOVIEREC_VAR_DIR>/reports/"
    "protocol-<A|B>.json); with both protocols, -A / -B is added to its name.",
)
@_stopped_like_ctrl_c
def evaluate(data_dir: Path, protocol: str | None, seeds: str, models: str | None, out: Path | None) -> None:
    """Run the offline protocols of EVALUATION.md (both, or --protocol's); per protocol print the
    table, write JSON + PNG."""
    from app.recommender.data import removed_unless_done
    from app.recommender.evaluation import PROTOCOLS, TooLittleDataError, format_table
    from app.recommender.evaluation import evaluate as run_evaluation
    from app.recommender.models import CANDIDATES
    from app.recommender.report import plot_path, write_report

    names, seed_list = _models(models) or list(CANDIDATES), _seeds(seeds)

    def refuse_a_directory(path: Path) -> None:
        if path.is_dir():
            raise click.ClickException(
                f"--out {out or path} cannot be written: {path} is a directory (give a JSON file's path)"
            )

    if out is not None:  # first: an empty --out (or ".") has no name to add -A / -B to
        refuse_a_directory(out)
    paths = _report_paths(out, [protocol] if protocol else list(PROTOCOLS))
    files = [name for path in paths.values() for name in (path, plot_path(path))]
    if len({str(name).casefold() for name in files}) < len(files):  # the plot written over the report
        raise click.BadParameter(
            f"{out} ends in .png, the suffix of the plot written beside the JSON report: "
            "give the report's path (e.g. report.json)",
            param_hint="--out",
        )
    for path in paths.values():
        refuse_a_directory(path)
    data = _load_data(data_dir)  # first: a run refused for its data leaves no directory behind
    directory = next(iter(paths.values())).parent  # one directory holds them all
    with removed_unless_done(directory):  # ... nor one too little to evaluate, or stopped (Ctrl-C)
        _output_directory(directory, "--out", out)
        for index, (letter, path) in enumerate(paths.items()):
            try:
                report = run_evaluation(data, names, letter, seed_list)
            except TooLittleDataError as exc:
                raise click.ClickException(str(exc)) from exc
            click.echo(("\n" if index else "") + format_table(report))
            try:
                json_path, png_path = write_report(report, path)
            # a full disk, or the file replaced meanwhile: the table above stays printed
            except OSError as exc:
                raise click.ClickException(f"--out {path} cannot be written: {exc}") from exc
            click.echo(f"report: {json_path}  plot: {png_path}")


# ----------------------------------------------------------------------------- serving


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, MAX_PORT))
@click.option("--debug", is_flag=True, help="Flask debug mode (development only).")
@click.option(
    "--check",
    is_flag=True,
    help="Only check that the server can listen on --host/--port, then exit (make run, before its banner).",
)
def serve(host: str, port: int, debug: bool, check: bool) -> None:
    """Development server (production: make serve-prod, i.e. scripts/start-uwsgi.sh with uwsgi.ini)."""
    from app import StartupError, check_listen_address, create_app, run_development_server
    from app.config import ConfigurationError
    from app.listener import ListenerError
    from app.pipeline.commands import settings_for_cli

    try:  # before the app is built (its database migrated): werkzeug named neither
        check_listen_address(host, port)
    except ListenerError as exc:
        raise click.ClickException(str(exc)) from exc
    if check:
        return

    # `movierec --log-level X serve` names the service's level, as MOVIEREC_LOG_LEVEL does: the
    # app configures its logging from the settings, so the option given is passed on as one.
    group = click.get_current_context().find_root()
    given = group.get_parameter_source("log_level") is click.core.ParameterSource.COMMANDLINE
    level = str(group.params["log_level"]).upper() if given else None
    try:  # the secrets and the database are checked once the app is built: a line, not a traceback
        application = create_app(settings_for_cli(debug=debug, log_level=level))
    except (ConfigurationError, StartupError) as exc:
        raise click.ClickException(str(exc)) from exc
    run_development_server(application, host, port, debug)


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply Alembic migrations to MOVIEREC_DATABASE_URL."""
    from app.pipeline.commands import service_database, settings_for_cli
    from app.storage.db import DatabaseSchemaError

    try:
        with service_database(settings_for_cli()) as database:
            database.upgrade()
    except DatabaseSchemaError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("schema up to date")


@cli.group()
def feedback() -> None:
    """The scores the feedback journal set aside (rejected.jsonl)."""


@feedback.command("replay-rejected")
def feedback_replay_rejected() -> None:
    """Store the scores the database refused (rejected.jsonl) again, once the cause is fixed.

    The stored ones leave the file, the ones refused again stay (exit 1). Idempotent, and safe
    while the service runs: run it with the service's settings (MOVIEREC_DATABASE_URL, its journal
    directory)."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.pipeline.commands import service_database, settings_for_cli
    from app.services.feedback_journal import REJECTED, ReplayInProgress, replay_rejected

    settings = settings_for_cli()
    directory = settings.feedback_journal
    try:
        with service_database(settings) as database:
            stored, refused = replay_rejected(directory, database)
    except ReplayInProgress as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a journal of the service's user, a full disk: named, not Python's "[Errno 13]"
        raise click.ClickException(_journal_failure(directory, exc)) from exc
    except SQLAlchemyError as exc:  # a missing table or grant: every score not stored stays
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"the database could not take the scores: {detail}") from exc
    if stored == refused == 0:
        click.echo(f"no rejected scores in {directory}")
        return
    click.echo(f"{directory / REJECTED}: {stored} stored, {refused} refused again")
    if refused:
        click.echo(f"the scores refused again stay in {directory / REJECTED}", err=True)
        sys.exit(1)


def _journal_failure(directory: Path, exc: OSError) -> str:
    """Why ``replay-rejected`` could not use the feedback journal ``directory``: the path that
    failed and why; run by another user than the service's (root's journal, a host user's shell),
    also how to run it as the service's."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
    hint = (
        "; run it as the service's user, with its settings "
        "(e.g. docker compose exec api movierec feedback replay-rejected)"
        if isinstance(exc, PermissionError)
        else ""
    )
    return f"the feedback journal {directory} cannot be used: {exc.strerror or exc}{where}{hint}"


@cli.command("accuracy")
@click.argument("model_path", type=click.Path(exists=True, path_type=Path))
@click.argument("test_data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--error-tolerance",
    # finite and >= 0: nan failed every model and inf passed every one (the build's gate)
    type=float,
    callback=_at_least(0),
    default=1e-5,
    show_default=True,
    help="accuracy test tolerance (a finite number >= 0)",
)
def accuracy(model_path: Path, test_data: Path, error_tolerance: float) -> None:
    """The seed's accuracy test: exit 1 when the score falls below expected - tolerance."""
    from app.recommender.accuracy import run_accuracy_test
    from app.recommender.bundle import BundleError

    try:
        result = run_accuracy_test(model_path, test_data, error_tolerance)
    except (BundleError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        json.dumps(
            {"metric": result.metric, "score": result.score, "expected_score": result.expected,
             "floor_score": result.floor, "tolerance": result.tolerance, "passed": result.passed,
             "model": result.model, "unknown_titles": len(result.unknown_titles)}
        )
    )  # fmt: skip
    tested = f"(model {result.model})"  # a store's latest, of the versions it holds
    if result.short_lists:  # whatever it scored: the lists it serves are short
        click.echo(f"FAILED: {result.metric}: {result.short_lists} {tested}", err=True)
        sys.exit(1)
    if result.below_floor:
        click.echo(
            f"FAILED: {result.metric} {result.score:.6f} < floor {result.floor:.6f} - {result.tolerance} "
            f"(the test data's floor_score: global most-rated on the same users) {tested}"
            f"{result.unknown_note}",
            err=True,
        )
        sys.exit(1)
    if not result.passed:
        click.echo(
            f"FAILED: {result.metric} {result.score:.6f} < expected "
            f"{result.expected:.6f} - {result.tolerance} {tested}{result.unknown_note}",
            err=True,
        )
        sys.exit(1)
    click.echo(
        f"OK: {result.metric} {result.score:.6f} >= expected {result.expected:.6f} - {result.tolerance} "
        f"{tested}"
    )


# ----------------------------------------------------------------------------- ML life cycle
# pipeline run|versions, schedule, promote, sql, features build (app/pipeline/commands.py)
from app.pipeline.commands import register_commands  # noqa: E402 - after the group they attach to

register_commands(cli)


def main() -> None:
    cli(prog_name="movierec")


if __name__ == "__main__":
    main()
