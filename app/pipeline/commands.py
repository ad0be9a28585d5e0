"""The ML life-cycle commands of ``movierec``: pipeline, schedule, promote, sql, features.

Registered on the ``movierec`` group by app/cli.py. Heavy imports (Metaflow, MLflow, DuckDB)
happen inside the commands, so ``movierec --help`` and the serving image stay light.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from app import stop_signals

log = logging.getLogger(__name__)


class DirectoryPath(click.Path):
    """A directory option's path; an empty one (``--model-dir "$DIR"`` with DIR unset) is a usage
    error: click read it as the working directory, where ``train`` wrote its bundles and ``data
    fetch`` its cache, although an empty MOVIEREC_MODEL_DIR (MOVIEREC_DATA_DIR) means the default."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a directory (or leave the option out for its default)", param, ctx)
        return super().convert(value, param, ctx)


_DATA_DIR = click.option(
    "--data-dir",
    type=DirectoryPath(),
    default=None,
    help="Raw ml-100k (default: MOVIEREC_DATA_DIR, else data).",
)
_MODEL_DIR = click.option(
    "--model-dir",
    type=DirectoryPath(),
    default=None,
    help="Serving model store (default: MOVIEREC_MODEL_DIR, else model).",
)


def listed_names(value: str | None, option: str) -> list[str] | None:
    """The names of a comma-separated option (``--models a,b``); None when it is not given.

    Given without a name in it (``","``, ``" "``, or ``""``: a variable left empty) is a usage
    error naming the option: it read as not given, and every default model was trained.
    """
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter(
            f"{value!r} names none; give comma-separated names, e.g. a,b", param_hint=option
        )
    return names


def settings_for_cli(**overrides: Any) -> Any:
    """The settings, with the ``None`` overrides (options not given) left out; a bad setting is
    a one-line error naming it (``ClickException``), not a traceback: every ``movierec`` command."""
    from app.config import ConfigurationError, load_settings

    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def service_database(settings: Any) -> Iterator[Any]:
    """The service database (MOVIEREC_DATABASE_URL) for a command, disposed of when it ends.

    One that cannot be reached, a SQLite file whose directory cannot be created, or one that
    answers and refuses (no CREATE grant on the schema, a SQLite file that is no database) is one
    ``Error:`` line naming the database with its password masked (``ClickException``), not a
    traceback: ``db upgrade`` and ``features build``.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    from app.storage.db import Database, DatabaseUnavailableError, refusal, unreachable_message

    url = settings.sqlalchemy_url

    def unreachable(exc: Exception) -> click.ClickException:
        return click.ClickException(unreachable_message(url, exc))

    try:
        database = Database(url)
    except OSError as exc:  # make_engine creates a SQLite file's directory
        raise unreachable(exc) from exc
    try:
        yield database
    except (OperationalError, DatabaseUnavailableError) as exc:
        raise unreachable(exc) from exc
    except DBAPIError as exc:
        raise click.ClickException(refusal(url, exc)) from exc
    finally:
        database.dispose()


def format_summary(summary: dict[str, Any]) -> str:
    """The run as a table: one row per candidate version with both protocols and the decision."""
    from app.pipeline.runner import export_outcome, version_label

    header = f"{'version':>7}  {'candidate':<24} {'A ndcg@10':>17} {'B ndcg@10':>17}  decision"
    lines = [header, "-" * len(header)]
    for entry in summary.get("candidates", []):
        a, b = entry.get("summary_a") or {}, entry.get("summary_b") or {}
        a_text = f"{a['ndcg@10_mean']:.4f} ± {a['ndcg@10_sd']:.4f}" if a else "-"
        b_text = f"{b['ndcg@10_mean']:.4f} ± {b['ndcg@10_sd']:.4f}" if b else "-"
        decision = entry.get("decision", "?")
        lines.append(f"{entry['version']:>7}  {entry['candidate']:<24} {a_text:>17} {b_text:>17}  {decision}")
    ingest = summary.get("ingest", {})
    lines.append(
        f"data {summary.get('data_hash')} ({ingest.get('n_ratings')} ratings, "
        f"{ingest.get('feedback_ratings')} from feedback)  code {summary.get('code_version')}  "
        f"features snapshot {summary.get('features_snapshot')}"
    )
    lines.append(
        f"champion: {version_label(summary.get('champion'))} "
        f"(before: {version_label(summary.get('champion_before'))}, promoted now: "
        f"{summary.get('promoted') or 'none'})  {export_outcome(summary, '  ')}"
    )
    return "\n".join(lines)


def register_commands(cli: click.Group) -> None:
    """Attach the life-cycle commands to the ``movierec`` group."""
    cli.add_command(pipeline)
    cli.add_command(schedule)
    cli.add_command(promote)
    cli.add_command(sql)
    cli.add_command(features)


# ----------------------------------------------------------------------------- pipeline


@click.group()
def pipeline() -> None:
    """The training flow (Metaflow) and the model registry (MLflow)."""


@pipeline.command("run")
@_DATA_DIR
@_MODEL_DIR
@click.option(
    "--candidates",
    default=None,
    help="Comma-separated candidates "
    "(default: MOVIEREC_PIPELINE_CANDIDATES, else every candidate of docs/models.md).",
)
@click.option(
    "--seeds",
    default=None,
    help="Comma-separated split seeds (default: MOVIEREC_PIPELINE_SEEDS, else 0,1,2,3,4).",
)
@click.option(
    "--if-changed", is_flag=True, help="Skip when neither data nor code changed since the last run."
)
@click.option(
    "--json-out", type=click.Path(path_type=Path), default=None, help="Also write the run summary here."
)
@click.option(
    "--allow-less-data",
    is_flag=True,
    help="Let this run replace a champion trained on more data (MOVIEREC_GATE_MIN_DATA_FRACTION=0 "
    "for this run): the data was reduced on purpose.",
)
def pipeline_run(
    data_dir: Path | None,
    model_dir: Path | None,
    candidates: str | None,
    seeds: str | None,
    if_changed: bool,
    json_out: Path | None,
    allow_less_data: bool,
) -> None:  # fmt: skip
    """Run the whole flow once: ingest → features → train → register → gate → export → reload."""
    from app.pipeline.runner import (
        BookkeepingError,
        PipelineError,
        resolve_candidates,
        run_flow,
    )
    from app.pipeline.schedule import report_run, stop_on_sigterm, tick
    from app.recommender.seeds import parse_seeds

    settings = settings_for_cli(
        data_dir=data_dir, model_dir=model_dir, gate_min_data_fraction=0.0 if allow_less_data else None
    )
    if json_out is not None:  # found out after the flow released its models, it was a traceback
        _refuse_unwritable(json_out, "--json-out")
    try:
        given = listed_names(candidates, "--candidates")
        names = resolve_candidates(given) if given else None
    except ValueError as exc:  # named, as train's and evaluate's --models and --seeds are
        raise click.BadParameter(str(exc), param_hint="--candidates") from exc
    try:
        seed_list = parse_seeds(seeds) if seeds is not None else None  # "": none, as train's
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--seeds") from exc
    # SIGTERM (a CI job's timeout, docker stop) kills the flow with its workers and reports it, as
    # the scheduler's: the command then fails saying so, rather than dying and leaving the flow
    # to die of a broken pipe mid-step with its MLflow runs RUNNING
    stop_on_sigterm()
    try:
        if if_changed:
            result = tick(
                settings,
                runner=lambda s, trigger: run_flow(s, names, seed_list, trigger, stream=True),
                candidates=names,
                trigger="manual",  # an operator's run that skips when nothing changed
                seeds=seed_list,
            )
            if result.error and result.summary:  # released, then its bookkeeping failed
                click.echo(format_summary(result.summary))
                _write_summary(json_out, result.summary)
            if result.error:
                raise click.ClickException(result.error)
            if not result.ran:
                click.echo(f"skipped: {result.decision.reason}")
                return
            summary = result.summary or {}
        else:
            run = run_flow(settings, names, seed_list, "manual", stream=True)
            summary = run.summary
            report_run(settings, summary)  # a champion the service did not reload is asked again later
    except BookkeepingError as exc:  # the champion may have moved: say what the run did, then what failed
        report_run(settings, exc.summary)
        click.echo(format_summary(exc.summary))
        _write_summary(json_out, exc.summary)
        raise click.ClickException(str(exc)) from exc
    except PipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(summary))
    click.echo(f"flow time: {summary.get('seconds')} s")
    _write_summary(json_out, summary)


def _write_summary(json_out: Path | None, summary: dict[str, Any]) -> None:
    """``--json-out``: the summary of a run that released its models, its bookkeeping failed or not
    (an earlier run's file left in place would name a champion that is no longer one). Written
    beside its name and renamed: one cut short (a full disk, Ctrl-C) left a truncated summary."""
    from app.durable import written_beside

    if json_out:
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            with written_beside(json_out) as partial:
                partial.write_text(json.dumps(summary, indent=2, default=str))
        except OSError as exc:  # replaced meanwhile, a full disk: the table above stays printed
            raise click.ClickException(f"--json-out {json_out} cannot be written: {exc}") from exc


def _refuse_unwritable(path: Path, option: str) -> None:
    """A file ``option`` writes once the work is done: a directory there, a file in the way of its
    directory or a directory this user cannot write is one ``Error:`` line now. Nothing is
    created (the run may yet fail)."""
    if path.is_dir():
        problem = "it is a directory (give a JSON file's path)"
    else:
        existing = next(parent for parent in (path, *path.parents) if os.path.lexists(parent))
        if existing != path and not existing.is_dir():
            problem = f"{existing}: {os.strerror(errno.ENOTDIR)}"
        elif not os.access(existing, os.W_OK if existing == path else os.W_OK | os.X_OK):
            problem = f"{existing}: {os.strerror(errno.EACCES)}"
        else:
            return
    raise click.ClickException(f"{option} {path} cannot be written: {problem}")


@pipeline.command("versions")
def pipeline_versions() -> None:
    """Every registered version: candidate, protocol-A NDCG@10, gate decision, aliases.

    Then a warning when the model store's ``latest`` serves a registered version that is not
    the champion (a release killed half way; the next run or tick repairs it). Reads only.
    """
    from app.registry.export import served_mismatch
    from app.registry.mlflow_registry import Registry, RegistryError, first_request

    settings = settings_for_cli()
    try:
        registry = Registry.from_settings(settings)
        with first_request():  # a tracking server that is down: seconds, not MLflow's 4 minutes
            versions = registry.versions()
        mismatch = served_mismatch(registry, settings.model_dir) if versions else None
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    if not versions:
        # A tracking server's URI may carry credentials (postgresql://user:password@…): never print them.
        click.echo(f"no versions of {registry.model_name} registered at {registry.display_uri}")
        return
    for info in versions:
        ndcg = f"{info.ndcg_a:.4f}" if info.ndcg_a is not None else "-"
        aliases = ",".join(info.aliases)
        click.echo(f"v{info.version:<4} {info.candidate:<24} A ndcg@10 {ndcg}  {info.decision or '-':<9} "
                   f"{aliases:<20} {info.bundle_version}")  # fmt: skip
    if mismatch is not None:
        click.echo(
            f"warning: {mismatch.describe(settings.model_dir)}; the next pipeline run or scheduler tick "
            + (
                "points latest back at the champion's bundle (the alias is authoritative: a release "
                "moves it last)"
                if mismatch.champion is not None
                else "leaves it (no champion to serve instead) and may promote one"
            )
            + f"; to serve v{mismatch.served.version}: movierec promote --version {mismatch.served.version}"
        )


# ----------------------------------------------------------------------------- schedule and promote


@click.command()
@click.option("--cron", default=None, help="Crontab expression (UTC); default MOVIEREC_SCHEDULE_CRON.")
@click.option(
    "--once",
    is_flag=True,
    help="Decide and (maybe) run once, then exit; recorded as a scheduler tick "
    "(var/pipeline/schedule-last-tick).",
)
def schedule(cron: str | None, once: bool) -> None:
    """Run the training flow on a cron schedule; skip when neither data nor code changed."""
    from app.pipeline.schedule import cron_trigger, recorded_tick, serve, stop_on_sigterm, tick
    from app.registry.mlflow_registry import RegistryError

    settings = settings_for_cli(schedule_cron=cron)
    # a typo in the expression is a usage error, not a traceback from APScheduler; checked with
    # --once too, so a cron job's typo surfaces before the scheduler service meets it
    try:
        cron_trigger(settings.schedule_cron)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cron / MOVIEREC_SCHEDULE_CRON") from exc
    if once:
        stop_on_sigterm()  # a flow running is killed and reported, as the scheduler's is
        # recorded as the scheduler's ticks are: a scheduler started later does not tick again for it
        result = recorded_tick(settings, lambda: tick(settings))
        if result.error and result.summary:  # released, then its bookkeeping failed
            click.echo(format_summary(result.summary))
        if result.error:
            raise click.ClickException(result.error)
        click.echo(format_summary(result.summary) if result.summary else f"skipped: {result.decision.reason}")
        return
    try:
        serve(settings)
    except RegistryError as exc:  # the start-up champion check: the registry cannot be opened
        raise click.ClickException(str(exc)) from exc


def _version_number(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """``--version``: a registered version's number (1, 2, …), checked before the registry is
    opened: ``abc``, ``v3`` or ``0`` created the registry's store and read "has no version"."""
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise click.BadParameter(
            f"{value!r} is not a version number: give the number `movierec pipeline versions` lists (v3: 3)"
        )
    return str(int(value))


@click.command()
@click.option(
    "--version",
    "version",
    required=True,
    callback=_version_number,
    help="Registered model version number to serve.",
)
@_MODEL_DIR
@click.option("--reason", default="manual promotion", show_default=True, help="Stored with the version.")
@click.option("--no-reload", is_flag=True, help="Do not ask the running service to reload.")
@click.option(
    "--force",
    is_flag=True,
    help="Promote a version the gate never decided on (its run failed before the decision was recorded).",
)
def promote(version: str, model_dir: Path | None, reason: str, no_reload: bool, force: bool) -> None:
    """Move the champion alias to VERSION (rollback or forward) and serve its bundle.

    A version without a gate decision (``pending``: its run failed between registering it and
    recording the gate's decision) is refused unless ``--force``: its bundle was never
    smoke-tested nor compared with the champion.

    When recording the promotion with the version fails after the alias moved, the service is
    still asked to reload, and the command fails saying the champion moved.
    """
    from app.pipeline.runner import PipelineError, flow_lock
    from app.registry.export import SUPERSEDED, promote_version, reload_service, remember_reload
    from app.registry.mlflow_registry import Registry, RegistryError, first_request

    settings = settings_for_cli(model_dir=model_dir)
    try:
        registry = Registry.from_settings(settings)
        # A flow running now gates against the champion it read and moves the alias when it
        # ends: this promotion would be overwritten, or its gate would compare with the wrong one.
        with flow_lock(
            settings, "a training flow is running and may move the champion itself",
            holder="`movierec promote` is promoting a version",
        ):  # fmt: skip
            with first_request():  # a tracking server that is down: seconds, not MLflow's 4 minutes
                target = registry.get(version)
            if not target.decided and not force:
                raise click.ClickException(_undecided(target))
            previous = registry.champion()
            # validates before moving anything; the alias moves once the bundle is served
            path = promote_version(registry, target.version, settings.model_dir)
            if not no_reload:  # the reload is owed from now on: killed before asking, the next tick asks
                remember_reload(settings, False)
            before = previous.version if previous else None
            note = f"{reason}: champion moved from v{before} to v{target.version}"
            if not target.decided:
                note += f" (forced, without a gate decision: it was {target.decision or 'never recorded'})"
            unrecorded = None
            try:
                registry.record_decision(
                    target.version, "promoted", [*target.reasons, note], gate_champion_before=before or ""
                )
            except Exception as exc:  # the champion moved all the same: say so, and still reload
                log.exception("could not record the promotion of version %s", target.version)
                unrecorded = f"{type(exc).__name__}: {exc}"
    except (RegistryError, PipelineError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a directory cannot be created or written: nothing was moved
        raise click.ClickException(_promote_failure(version, settings, exc)) from exc
    click.echo(f"champion: v{target.version} ({target.candidate}, bundle {target.bundle_version}) → {path}")
    if not no_reload and not settings.service_url:  # nothing to ask, nor to ask again later
        click.echo(
            "no service asked to reload: MOVIEREC_SERVICE_URL is empty; a service loads latest when it starts"
        )
    elif not no_reload:
        reloaded = reload_service(settings, target.bundle_version)
        if reloaded == SUPERSEDED:
            click.echo(
                "service not reloaded: a reload of another bundle took over (see the warning); "
                "not asked again"
            )
        else:
            click.echo(
                "service reloaded"
                if reloaded
                else "service not reloaded (see the warning); it loads latest on start, and the "
                "scheduler's next tick asks it again"
            )
    if unrecorded:
        raise click.ClickException(
            f"the champion is now v{target.version} (moved from v{before}) and the model store serves "
            f"its bundle, but recording the decision with the version failed: {unrecorded}; "
            f"`movierec pipeline versions` still shows it {target.decision or '-'}"
        )


def _undecided(target: Any) -> str:
    """Why ``promote`` refuses a version the gate never decided on."""
    state = target.decision or "without any gate decision recorded"  # pending, abandoned
    return (
        f"version {target.version} ({target.candidate}) has no gate decision ({state}): its pipeline "
        "run failed before the gate recorded one, so its bundle was never smoke-tested nor compared "
        "with the champion; promote it anyway with --force"
    )


def _promote_failure(version: str, settings: Any, exc: OSError) -> str:
    """What ``promote`` could not do, told by the path the error names and the role it plays.

    The flow lock is taken in the var directory before the bundle is exported to the model
    store, so either may be the one that cannot be created or written. A path inside both
    belongs to the deeper; a missing ancestor of both (they are created with their parents)
    to the var directory, which promote uses first.
    """
    roles = [
        (Path(os.path.abspath(settings.var_dir)), "the var directory, where promote takes the flow lock"),
        (Path(os.path.abspath(settings.model_dir)), "the model store, where the bundle is exported"),
    ]
    if not isinstance(exc.filename, str):
        return f"cannot promote version {version}: {exc}"
    failed = Path(os.path.abspath(exc.filename))
    inside = [entry for entry in roles if failed.is_relative_to(entry[0])]
    above = [entry for entry in roles if entry[0].is_relative_to(failed)]
    if inside:
        root, role = max(inside, key=lambda entry: len(entry[0].parts))
    elif above:
        root, role = above[0]
    else:
        return f"cannot promote version {version}: {exc}"
    return f"cannot promote version {version}: {failed} ({role}: {root}): {exc.strerror or exc}"


# ----------------------------------------------------------------------------- features


@click.command()
@click.argument("query")
@click.option(
    "--root", default=None, help="Features store root (default: MOVIEREC_FEATURES_ROOT or <data>/features)."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
def sql(query: str, root: str | None, fmt: str) -> None:
    """Run SQL (DuckDB) over the latest features: users, items, ratings, feedback (+ *_history)."""
    import duckdb

    from app.pipeline.features_store import FeatureStore
    from app.pipeline.runner import features_root

    root = root or features_root(settings_for_cli())
    try:
        # a root fsspec cannot open (FeaturesRootError) is a ValueError too
        frame = FeatureStore(root).sql(query)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # LATEST or the root not readable by this user: not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        raise click.ClickException(
            f"the features store {root} cannot be read: {exc.strerror or exc}{where}"
        ) from exc
    except duckdb.Error as exc:
        raise click.ClickException(f"SQL error: {exc}") from exc
    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(_json_records(frame))
    else:
        click.echo(frame.to_string(index=False) if len(frame) else "(no rows)")


def _json_records(frame: Any) -> str:
    """The rows as a JSON array, every float to its last digit.

    pandas' ``to_json`` writes 10 decimals: 3.5955882352941178 became 3.5955882353 and 5e-13
    became 0.0. orjson writes the shortest text that reads back as the same float; missing
    values (NaN, NA, NaT) are null, also inside a list, times ISO 8601, and map keys text.
    """
    import numpy as np
    import orjson
    import pandas as pd

    def default(value: Any) -> Any:  # missing columns are None by now (``where`` below)
        if value is pd.NA or value is pd.NaT:  # missing inside a list or a struct
            return None
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if isinstance(value, np.ndarray):  # a list with a NULL or text in it: an object array
            return value.tolist()
        if hasattr(value, "item"):  # a NumPy scalar orjson does not take as it is
            return value.item()
        return str(value)

    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    # a map keyed by numbers (``histogram(age)``) has int keys: written as JSON's text keys
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return orjson.dumps(records, default=default, option=options).decode()


@click.group()
def features() -> None:
    """The features store (Parquet snapshots + the service's user_features table)."""


@features.command("build")
@_DATA_DIR
def features_build(data_dir: Path | None) -> None:
    """Ingest raw data (ml-100k fetched first when the data dir lacks it) + feedback, write a features
    snapshot, load user features into the DB."""
    from app.pipeline.runner import features_root

    settings = settings_for_cli(data_dir=data_dir)
    root = features_root(settings)
    # SIGTERM (a CI job's timeout, docker stop) and SIGHUP (the terminal closed) stop the build as
    # Ctrl-C does: it removes the snapshot it staged (killed, it stayed until a build an hour
    # later), and one during the load and publish waits for LATEST (FeatureStore.staged_snapshot)
    with stop_signals.like_ctrl_c():
        _build_features(settings, root)


def _build_features(settings: Any, root: str) -> None:
    from app.pipeline.features_store import DamagedLatest, FeatureStore, SnapshotSuperseded
    from app.pipeline.ingest import ingest
    from app.pipeline.runner import FeaturesRootError
    from app.recommender.data import DataUnavailableError
    from app.storage.db import DatabaseSchemaError

    try:
        store = FeatureStore(root)  # before the ingest: a root fsspec cannot open is named at once
        with service_database(settings) as database:
            ingested = ingest(settings.data_dir, database)
            try:  # published once the database serves it too; old ones pruned
                snapshot, loaded = store.load_into(database, ingested, settings.features_keep_snapshots)
            except OSError as exc:  # a root that is a file, a full or read-only disk: not a traceback
                raise click.ClickException(f"the features store {root}: {exc}") from exc
    except SnapshotSuperseded as exc:  # not a failure: the features are as new as this build's
        click.echo(f"{exc}; nothing loaded into the database")
        return
    # refused raw files, schema or features root: no traceback
    except (DataUnavailableError, DatabaseSchemaError, FeaturesRootError, DamagedLatest) as exc:
        raise click.ClickException(str(exc)) from exc
    counts = ", ".join(f"{n} {name}" for name, n in snapshot.counts.items())
    click.echo(f"snapshot {snapshot.id} at {snapshot.url}: {counts}; {loaded} users loaded into the database")
