"""``movierec schedule``: the training flow on a cron expression (APScheduler).

Each tick first asks whether there is anything new to learn from: the data hash (raw files
plus the feedback collected since — the same hash the flow records) and the code version
(:func:`app.recommender.bundle.code_version`, a hash of the ML code and of the numerical
libraries' versions). When neither changed
since the last finished pipeline run, the tick is skipped; a change of either triggers a
run, which registers new model versions and, if one passes the gate, deploys it. That is
seed 000's "a data scientist updates the training code → a new model version is deployed".
When no champion exists yet, the scheduler runs once at start instead of waiting for cron, and
when a cron time passed while it was not running (the time of the last finished tick is kept in
the var root), it ticks once at start. While there is no champion, a tick that failed is tried
again soon, with a backoff, rather than at the next cron time, and so is that tick at start for a
missed cron time, until the next one (:func:`serve`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from app.config import Settings
from app.durable import write_durably
from app.pipeline import runner as flow_runner
from app.pipeline.runner import (
    BookkeepingError,
    DataRefusedError,
    FlowRun,
    PipelineError,
    export_outcome,
    resolve_candidates,
    run_flow,
    version_label,
)
from app.recommender.seeds import parse_seeds
from app.registry.mlflow_registry import SEEDS_TAG, Registry, RegistryError, covers_seeds

log = logging.getLogger(__name__)

JOB_ID = "training-flow"
RETRY_JOB_ID = "training-retry"  # the next try of a failed tick while there is no champion
_T = TypeVar("_T")


class _LastRefusal:
    """The refusal of the data the last tick of this process ended with (None: it ended otherwise)."""

    reason: str | None = None


_LAST_REFUSAL = _LastRefusal()


@dataclass(frozen=True)
class RunDecision:
    run: bool
    reason: str
    data_hash: str
    code_version: str


@dataclass(frozen=True)
class TickResult:
    """What one tick did: ``summary`` when a flow released its models (``error`` too when its
    bookkeeping failed after that), ``error`` alone when nothing was released."""

    decision: RunDecision
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.summary is not None


def should_run(
    registry: Registry,
    data_hash: str,
    code_version: str,
    candidates: Sequence[str] = (),
    seeds: Sequence[int] = (),
) -> RunDecision:
    """Run when there is no champion, no finished run, or the data or code changed since it,
    or when one of ``candidates`` (the ones this run would train) was never trained on this
    data and code, on every one of ``seeds`` (the split seeds it would evaluate), by a finished run.

    The last run may have been an operator's ``movierec pipeline run --candidates x`` (or
    ``--seeds 0``) on new data or code: looking at the data and code alone, the scheduler would
    then skip for good, and the configured candidates would never be trained (nor gated) on them,
    or only on that one split.
    """
    if registry.champion() is None:
        return RunDecision(True, "no champion yet", data_hash, code_version)
    last = registry.last_pipeline_run()
    if last is None:
        return RunDecision(True, "no finished pipeline run yet", data_hash, code_version)
    changes = []
    if last.get("data_hash") != data_hash:
        changes.append(f"data changed ({last.get('data_hash')} → {data_hash})")
    if last.get("code_version") != code_version:
        changes.append(f"code changed ({last.get('code_version')} → {code_version})")
    if not changes and candidates:
        trained = set(last.get("candidates", "").split(",")) if covers_seeds(last, seeds) else set()
        if not trained.issuperset(candidates):  # maybe by an earlier run on the same data and code
            trained |= registry.trained_candidates(data_hash, code_version, seeds)
        missing = [name for name in candidates if name not in trained]
        if missing:
            on = "" if covers_seeds(last, seeds) else f" on split seeds {','.join(map(str, seeds))}"
            changes.append(f"{', '.join(missing)} never trained on this data and code{on}")
            if on:
                changes[-1] += f" (the last run evaluated {last.get(SEEDS_TAG)} only)"
    if changes:
        return RunDecision(True, "; ".join(changes), data_hash, code_version)
    return RunDecision(
        False,
        f"neither data nor code changed since pipeline run {last.get('run_id')}",
        data_hash,
        code_version,
    )


class FingerprintError(RuntimeError):
    """The data hash cannot be computed, for a reason the message says whole (no traceback)."""


def current_fingerprint(settings: Settings) -> tuple[str, str]:
    """(data hash incl. feedback, code version) as the next run would record them.

    :class:`FingerprintError` when the service database (the feedback) cannot be reached: its
    message names the database (password masked), where the driver's own named only a host. So
    it is when the raw data is refused or cannot be had (DataUnavailableError: a malformed file, a
    data dir holding part of a layout, no source for ml-100k), with that message.
    """
    from sqlalchemy.exc import OperationalError

    from app.pipeline.ingest import ingest
    from app.recommender.bundle import code_version
    from app.recommender.data import DataUnavailableError
    from app.storage.db import Database, DatabaseUnavailableError, unreachable_message

    try:
        database = Database(settings.sqlalchemy_url)
    except OSError as exc:  # a SQLite file's directory cannot be created
        raise FingerprintError(unreachable_message(settings.sqlalchemy_url, exc)) from exc
    try:
        # the launcher asked to stop: the ingest ends at its next safe point, with the stop's message
        data_hash = ingest(
            settings.data_dir, database, lambda: flow_runner.check_stop("the ingest")
        ).data_hash
        return data_hash, code_version()
    except (OperationalError, DatabaseUnavailableError) as exc:
        raise FingerprintError(unreachable_message(settings.sqlalchemy_url, exc)) from exc
    except DataUnavailableError as exc:  # refused raw files: what to fix is the message, not a traceback
        raise FingerprintError(str(exc)) from exc
    finally:
        database.dispose()


def tick(
    settings: Settings,
    runner: Callable[..., FlowRun] = run_flow,
    fingerprint: Callable[[Settings], tuple[str, str]] = current_fingerprint,
    candidates: Sequence[str] | None = None,
    *,
    trigger: str = "schedule",
    seeds: Sequence[int] | None = None,
) -> TickResult:
    """One scheduled decision: skip, or run the flow. Failures are logged, never raised: at ERROR,
    but a refusal of the data (too little) the same as the previous tick's of this process, at WARNING.

    ``candidates``: what the run would train (default: the settings' candidates); ``seeds``: the
    split seeds it would evaluate (default: the settings' seeds). ``trigger``:
    what started it, recorded with the run — ``schedule`` for the scheduler and ``schedule
    --once``, ``manual`` for an operator's ``pipeline run --if-changed``.
    """
    # a refusal of the data is logged at ERROR when new, at WARNING when the tick before met the
    # same one (its reason names the data hash: the data did not change, a retry cannot fix it)
    refused_before, _LAST_REFUSAL.reason = _LAST_REFUSAL.reason, None
    try:  # a release killed half way (latest not the champion), a champion the service did not
        # load when it was exported: finish it, ask again first
        from app.registry.export import retry_pending_reload

        if not flow_runner.repair_release(settings):
            retry_pending_reload(settings)
    except Exception:
        log.exception("could not ask the service again to reload the model")
    try:
        registry = Registry.from_settings(settings)
        wanted = list(candidates) if candidates else resolve_candidates(settings.pipeline_candidates)
        split_seeds = list(seeds) if seeds else parse_seeds(settings.pipeline_seeds)
        decision = should_run(registry, *fingerprint(settings), wanted, split_seeds)
    except RegistryError as exc:  # the registry cannot be opened: the message says why
        log.error("could not decide whether to train: %s", exc)
        return TickResult(RunDecision(False, "registry unavailable", "", ""), error=str(exc))
    except PipelineError as exc:  # the launcher was asked to stop during the ingest (a deploy)
        level = logging.WARNING if flow_runner.STOPPING.is_set() else logging.ERROR
        log.log(level, "could not decide whether to train: %s", exc)
        return TickResult(RunDecision(False, "stopped", "", ""), error=str(exc))
    except FingerprintError as exc:  # an outage the message names whole: no traceback at every tick
        log.error("could not decide whether to train: %s", exc)
        error = f"could not decide whether to train: {exc}"
        return TickResult(RunDecision(False, "fingerprint failed", "", ""), error=error)
    except Exception as exc:
        log.exception("could not decide whether to train")
        error = f"could not decide whether to train: {type(exc).__name__}: {exc}"
        return TickResult(RunDecision(False, "fingerprint failed", "", ""), error=error)
    if not decision.run:
        log.info("training skipped: %s", decision.reason)
        return TickResult(decision)
    log.info("training: %s", decision.reason)
    try:
        run = runner(settings, trigger=trigger)
    except BookkeepingError as exc:  # the champion may have moved: report it, remember its reload
        log.error("training (%s) released, then failed: %s", trigger, str(exc).splitlines()[0])
        report_run(settings, exc.summary)
        return TickResult(decision, exc.summary, error=str(exc))
    except DataRefusedError as exc:  # too little data: the flow trained nothing
        _LAST_REFUSAL.reason = str(exc)
        if str(exc) != refused_before:
            log.error("training (%s) failed: %s", trigger, str(exc).splitlines()[0])
        else:  # mailed once already; the flow refuses it again until the data changes
            log.warning(
                "training (%s) failed: %s (as at the last tick: the data has not changed)",
                trigger, str(exc).splitlines()[0],
            )  # fmt: skip
        return TickResult(decision, error=str(exc))
    except PipelineError as exc:  # a WARNING when it was stopped on purpose (SIGTERM: a deploy)
        level = logging.WARNING if flow_runner.STOPPING.is_set() else logging.ERROR
        log.log(level, "training (%s) failed: %s", trigger, str(exc).splitlines()[0])
        return TickResult(decision, error=str(exc))
    except Exception as exc:  # the var root unwritable, a timeout: the scheduler must go on
        log.exception("training (%s) failed", trigger)
        return TickResult(decision, error=f"training failed: {type(exc).__name__}: {exc}")
    report_run(settings, run.summary)
    return TickResult(decision, run.summary)


def report_run(settings: Settings, summary: dict[str, Any]) -> None:
    """Log what a finished run changed; remember a champion the service did not reload.

    The flow's own output (its reload warning included) is not kept when it succeeds: this
    line is what the scheduler's log says about the run.
    """
    log.info(
        "training finished: champion %s (before: %s, promoted now: %s), %s",
        version_label(summary.get("champion")), version_label(summary.get("champion_before")),
        summary.get("promoted") or "none", export_outcome(summary),
    )  # fmt: skip
    if not summary.get("exported"):  # nothing new in the model store: nothing to reload
        return
    from app.registry.export import SUPERSEDED, remember_reload

    remember_reload(settings, summary.get("reloaded"))
    if summary.get("reloaded") == SUPERSEDED:
        log.warning(
            "the service at %s did not load champion v%s (%s): a reload of another bundle took over "
            "(an admin's, most likely); it is not asked again, so as not to undo that reload",
            settings.service_url, summary.get("champion"), Path(str(summary["exported"])).name,
        )  # fmt: skip
    elif settings.service_url and not summary.get("reloaded"):
        log.warning(
            "the service at %s did not reload champion v%s (%s): it serves the previous model until it "
            "does; the next scheduler tick asks again, and the service loads it when it starts",
            settings.service_url, summary.get("champion"), Path(str(summary["exported"])).name,
        )  # fmt: skip


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field with numbers spelled as names (0 and 7 = Sunday).

    APScheduler 3 counts weekdays from Monday = 0 (a documented historical mistake fixed in
    4.x), so ``1`` would silently mean Tuesday; names mean the same in both. Names in the
    field become cron's numbers first: APScheduler read ``mon,3`` as Monday and Thursday and
    refused ``sun-thu`` (its Sunday is the last day, so the range ran backwards).
    """
    if field == "*":
        return field
    numbers = field
    for number, name in enumerate(_WEEKDAYS):
        numbers = re.sub(name, str(number), numbers, flags=re.IGNORECASE)
    days: set[int] = set()
    for item in numbers.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                low, high = 0, 6
            elif "-" in span:
                low, high = (int(x) for x in span.split("-", 1))
            else:
                low = int(span)
                # "5/2" means 5, 7(=0): from 5 to the field's end, 7 as in cron's 0-7 (at 6, "1/2"
                # ran on Monday, Wednesday and Friday, not Sunday)
                high = 7 if step_text else low
        except ValueError as exc:  # neither a number nor a day's name ("xyz", "monday")
            raise ValueError(f"invalid day-of-week field {field!r}") from exc
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high and step >= 1):
            raise ValueError(f"invalid day-of-week field {field!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def cron_trigger(expression: str) -> Any:
    """An APScheduler trigger (UTC) for a standard 5-field crontab expression.

    When both the day-of-month and the day-of-week fields are restricted (neither starts with
    ``*``), cron fires on a day matching *either* ("0 3 1 * 1": the 1st and every Monday),
    while one APScheduler CronTrigger requires *both* (only a Monday that is the 1st, a few
    times a year). Such an expression becomes the union of two CronTriggers.

    ValueError for an expression that is not 5 valid fields, or that never fires ("0 3 30 2 *").
    """
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"a crontab expression has 5 fields (minute hour day month weekday): {expression!r}")
    minute, hour, day, month, weekday = fields
    day_of_week = crontab_weekdays(weekday)

    def trigger(day: str, day_of_week: str) -> Any:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone="UTC"
        )

    if day.startswith("*") or weekday.startswith("*"):
        result = trigger(day, day_of_week)
    else:
        result = OrTrigger([trigger(day, "*"), trigger("*", day_of_week)])
    # valid crontab that never fires (February 30th): no next time to wait for, or to log
    if result.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"{expression!r} never fires: no date has that day of the month in those months")
    return result


def build_scheduler(settings: Settings, job: Callable[[], Any], blocking: bool = True) -> Any:
    """An APScheduler scheduler with the training job on ``settings.schedule_cron`` (UTC)."""
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    trigger = cron_trigger(settings.schedule_cron)
    scheduler = (BlockingScheduler if blocking else BackgroundScheduler)(timezone="UTC")
    # One run at a time: a tick due while a run is going is dropped, not queued (the next one
    # decides on whatever changed meanwhile). A tick the scheduler wakes up late for runs once,
    # however late (misfire_grace_time None; coalesce: several missed are one): it waits on a
    # monotonic clock, which stops while the machine sleeps, so after a sleep (or a clock stepped
    # forward) it wakes past the tick's time, and a grace period dropped the day's training.
    # Named: APScheduler's lines ("Added job ...", "Running job ...") used the function's name,
    # serve.<locals>.scheduled.
    scheduler.add_job(
        job, trigger, id=JOB_ID, name=JOB_ID, max_instances=1, coalesce=True, misfire_grace_time=None
    )
    return scheduler


LAST_TICK_FILE = "schedule-last-tick"  # under <var>/pipeline: when the last scheduler tick began


def _last_tick_path(settings: Settings) -> Path:
    return Path(settings.var_dir) / "pipeline" / LAST_TICK_FILE


def record_tick(settings: Settings, began: datetime) -> None:
    """Remember that a tick that began at ``began`` has finished (replaced whole: a crash leaves
    the old time or the new one)."""
    path = _last_tick_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, (began.astimezone(UTC).isoformat() + "\n").encode())


def _try_record_tick(settings: Settings, began: datetime) -> None:
    """:func:`record_tick`, logged rather than raised when the var root cannot be written: the
    scheduler goes on (the tick's own failure, if any, is logged by the tick)."""
    try:
        record_tick(settings, began)
    except OSError:
        log.exception("could not record the scheduler tick's time in %s", _last_tick_path(settings))


def recorded_tick(settings: Settings, action: Callable[[], _T]) -> _T:
    """Run one tick (``action``) and record it (:func:`record_tick`) once it is over, however it
    ended, unless the launcher was stopped during it: a tick killed halfway is a missed one at
    the next start. The scheduler's ticks and ``movierec schedule --once``'s alike: ``--once``
    used to leave the file as it was, and a scheduler started afterwards ticked again at start
    for the cron time ``--once`` had just ticked for."""
    began = datetime.now(UTC)
    try:
        return action()
    finally:
        if not flow_runner.STOPPING.is_set():
            _try_record_tick(settings, began)


def last_tick(settings: Settings) -> datetime | None:
    """When the last finished tick began; None when none was recorded (or the file is unreadable)."""
    try:
        began = datetime.fromisoformat(_last_tick_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return began if began.tzinfo is not None else None


def missed_tick(settings: Settings, now: datetime | None = None) -> datetime | None:
    """The first cron time after the last recorded tick, when it has passed: a tick the scheduler
    was not running for (down, restarting, killed halfway through it). None: nothing missed."""
    began = last_tick(settings)
    if began is None:
        return None
    now = now or datetime.now(UTC)
    due = cron_trigger(settings.schedule_cron).get_next_fire_time(None, began + timedelta(seconds=1))
    return due if due is not None and due <= now else None


def _failed(outcome: Any) -> bool:
    """A tick that released nothing and said why (a :class:`TickResult` with an error only)."""
    return isinstance(outcome, TickResult) and outcome.error is not None and not outcome.ran


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def serve(settings: Settings, job: Callable[[], Any] | None = None, blocking: bool = True) -> Any:
    """Train once now if there is no champion, or tick now if a cron time passed while the scheduler
    was not running; then tick on the cron expression.

    Blocks until SIGTERM by default (``movierec schedule``); with ``blocking=False`` the scheduler
    runs in a background thread and is returned (tests, embedding).

    The time of the last finished tick is kept in the var root (``record_tick``), so the
    schedule survives a restart: without it a scheduler down at the cron time (a deploy, a
    crash, a reboot) skipped that tick, and a tick killed halfway was not tried again.

    While there is no champion, a tick that failed (the one at start, a cron tick, a try) is
    tried again after ``schedule_retry_seconds``, the wait doubling at each failure up to
    ``schedule_retry_max_seconds`` (a date job, :data:`RETRY_JOB_ID`); a tick that did not fail
    ends the tries, and once a champion exists only the cron expression ticks. The tick at start
    for a missed cron time is tried again the same way, champion or not, until a tick does not
    fail or the next cron time comes: after a reboot Docker starts every container at once
    (PostgreSQL still recovering), and that tick, failed and recorded as done, lost the day's
    training it was there to catch up on. Before, a failed
    training at start (PostgreSQL not up yet, a transient error) waited for the next cron time,
    hours with nothing in the registry to serve. Each try is announced by one INFO line: the failed
    tick's own ERROR is what the monitor mails, once a try (but a refusal of unchanged data, too
    little to train on, is a WARNING from its second try on: :func:`tick`). A tick stopped by
    SIGTERM is not tried again, the stop does not wait for a try to come, and a tick due after
    SIGTERM is not started.
    (Shut a scheduler returned by ``blocking=False`` down with ``wait=False``: ``wait=True`` holds
    APScheduler's job stores' lock while it waits for a tick, which may need it to schedule its
    next try.)
    """
    from apscheduler.jobstores.base import JobLookupError

    action = job or (lambda: tick(settings))
    ticking = threading.Lock()  # the cron tick and a try: one at a time
    first_wait = settings.schedule_retry_seconds
    wait = 0.0  # before the next try; 0: no try pending
    without_champion = False  # the registry's last answer
    catch_up_until: datetime | None = None  # a missed tick ticked at start: tried again until then

    def scheduled() -> None:
        # SIGTERM starts no other tick: the main thread looks for it every _STOP_POLL_SECONDS
        # before it shuts the scheduler down, and a cron time or a try due meanwhile ran a whole
        # tick after the stop (the release repair, a reload asked of the service), waited for
        if flow_runner.STOPPING.is_set():
            log.info("stopping: the tick due now is not started")
            return
        if not ticking.acquire(blocking=False):  # as max_instances=1 drops a cron tick
            log.info("a tick is running: the one due now is dropped")
            return
        try:
            try_again_if_failed(recorded_tick(settings, action))
        finally:
            ticking.release()

    def try_again_if_failed(outcome: Any) -> None:
        nonlocal wait, without_champion, catch_up_until
        if not first_wait or flow_runner.STOPPING.is_set():
            return
        if _failed(outcome):
            try:
                without_champion = Registry.from_settings(settings).champion() is None
            except Exception:  # the registry cannot say: its last answer holds
                log.debug("could not ask the registry for its champion", exc_info=True)
        else:  # the missed tick is done
            catch_up_until = None
        next_wait = min(wait * 2, settings.schedule_retry_max_seconds) if wait else first_wait
        due = datetime.now(UTC) + timedelta(seconds=next_wait)
        # a missed tick failing at start (after a reboot, PostgreSQL or MLflow not answering yet) is
        # tried again until the next cron time, whose tick takes over
        catching_up = catch_up_until is not None and due < catch_up_until
        if not (_failed(outcome) and (without_champion or catching_up)):
            catch_up_until = None
            if wait:  # the tries are over; one still due (this tick was a cron tick's) is pointless
                wait = 0.0
                with contextlib.suppress(JobLookupError):
                    scheduler.remove_job(RETRY_JOB_ID)
            return
        wait = next_wait
        scheduler.add_job(
            scheduled, "date", run_date=due, id=RETRY_JOB_ID, name=RETRY_JOB_ID,
            replace_existing=True, misfire_grace_time=None,
        )  # fmt: skip
        if without_champion:
            log.info(
                "no champion yet: the failed tick is tried again at %s UTC (in %s; the wait doubles at "
                "each failure, up to %s), then on '%s' once a champion exists",
                f"{due:%Y-%m-%d %H:%M:%S}", _duration(wait),
                _duration(settings.schedule_retry_max_seconds), settings.schedule_cron,
            )  # fmt: skip
        else:
            log.info(
                "the missed tick failed: it is tried again at %s UTC (in %s; the wait doubles at each "
                "failure, up to %s) until a tick does not fail or the next time on '%s', %s UTC",
                f"{due:%Y-%m-%d %H:%M:%S}", _duration(wait),
                _duration(settings.schedule_retry_max_seconds), settings.schedule_cron,
                f"{catch_up_until:%Y-%m-%d %H:%M}",
            )  # fmt: skip

    # In a thread of its own even for `movierec schedule`: the main thread waits for SIGTERM (below)
    scheduler = build_scheduler(settings, scheduled, blocking=False)
    if blocking:  # `movierec schedule`: its process is the scheduler's
        stop_on_sigterm()
    missed = missed_tick(settings)
    flow_runner.repair_release(settings)  # a release killed half way: before any tick, or none
    if Registry.from_settings(settings).champion() is None:
        without_champion = True
        log.info("no champion yet: training once at start")
        scheduled()
    elif missed is not None:
        log.info("missed the tick due at %s (UTC), the scheduler not running then: ticking now", missed)
        catch_up_until = scheduler.get_job(JOB_ID).trigger.get_next_fire_time(None, datetime.now(UTC))
        scheduled()
    elif last_tick(settings) is None:  # the first start in this var root: a time to count from
        _try_record_tick(settings, datetime.now(UTC))
    if flow_runner.STOPPING.is_set():  # SIGTERM during the tick at start
        return scheduler
    due = scheduler.get_job(JOB_ID).trigger.get_next_fire_time(None, datetime.now(UTC))
    log.info(
        "training scheduled on '%s' (UTC): next at %s", settings.schedule_cron, f"{due:%Y-%m-%d %H:%M} UTC"
    )
    scheduler.start()
    if blocking:
        while not flow_runner.STOPPING.is_set():  # polled: the handler only sets it (stop_on_sigterm)
            time.sleep(_STOP_POLL_SECONDS)
        flow = flow_runner.flow_at_stop()
        if flow is None:
            log.info("stopping (no training flow running)")
        else:
            log.warning(
                "stopping: the training flow running (pid %d) is killed with its workers and reported",
                flow.pid,
            )
        # not shutdown(wait=True): it holds the job stores' lock while it waits for the tick going
        # on, which may be scheduling its next try (that takes the lock): a deadlock
        scheduler.shutdown(wait=False)
        with ticking:  # a tick going on ends once its flow is killed
            pass
    return scheduler


_STOP_POLL_SECONDS = 0.5  # how often `movierec schedule` looks whether SIGTERM came


def stop_on_sigterm() -> None:
    """On SIGTERM (``docker stop``, ``systemctl stop``) or SIGINT (Ctrl-C): kill a running training
    flow with its workers (the tick reports it, its MLflow runs are marked FAILED, its scratch directory
    removed) and start no other; the process then exits normally (:func:`serve` stops the
    scheduler) or fails saying it was stopped (``schedule --once``, ``pipeline run``:
    app/pipeline/commands.py).

    SIGTERM used to kill the scheduler outright: its flow, left without a reader, died at its
    next line of output (a broken pipe) in whatever step it was, its MLflow runs stayed RUNNING
    and its scratch directory stayed behind. The tick it interrupts is not recorded as done
    (:func:`serve`), so the next start runs it again. Installed from the main thread only
    (Python's rule for signal handlers): elsewhere it does nothing.

    The handler only sets :data:`~app.pipeline.runner.STOPPING`, which the others poll. It runs
    in the main thread between two bytecodes of whatever that was doing, locks held included: it
    used to shut the scheduler down itself, taking the non-reentrant lock of the event the
    scheduler's loop waits on (and a thread pool's), and a SIGTERM landing while the loop held
    it deadlocked the scheduler for good; logging there can likewise re-enter a stream's write.

    Ctrl-C is handled the same way: its KeyboardInterrupt ended ``movierec schedule`` with a
    traceback or click's "Aborted!", the tick it interrupted recorded as done, and ``pipeline
    run`` without marking its flow's MLflow runs FAILED. (Ctrl-C reaches the flow as well, which
    dies of it: that is reported as the stop, not as a failure of the flow.) The first Ctrl-C
    says on stderr that a second quits at once; the second ends the process at once
    (:func:`~app.pipeline.runner.force_quit`: the flow running is killed with its workers, exit
    130), where it used to do nothing while the stop took its time (an ingest not over, a
    tracking server that does not answer while the flow's runs are marked FAILED). A second
    SIGTERM does nothing more: SIGKILL follows it (``docker stop``, systemd).

    The stop is acted on between steps: the ingest of :func:`current_fingerprint` (reading the
    raw files and the feedback: seconds, longer when ml-100k must be fetched first) looks at the
    flag between its phases and between chunks of the feedback read, and stops there; the rest
    of a tick's decision (the registry's answers) finishes, then no flow starts. An exception
    thrown into it from here could land anywhere, in the middle of publishing a fetched ml-100k
    into the data directory or of a schema upgrade; a second Ctrl-C is the way out that does not
    wait.
    """
    import signal
    import threading

    def stop(signum: int, _frame: Any) -> None:
        # no lock of the main thread's: nothing there waits on this event
        name = signal.Signals(signum).name
        if signum != signal.SIGINT:
            flow_runner.request_stop(name)
        elif flow_runner.STOPPING.is_set():  # a second Ctrl-C: the user will not wait
            flow_runner.force_quit(name)
        else:
            flow_runner.request_stop(name)
            done = (
                "the training flow running is killed with its workers and reported, and no other starts"
                if flow_runner.flow_at_stop() is not None
                else "no training flow running, and none starts"
            )
            flow_runner.say(f"stopping (SIGINT): {done}; Ctrl-C again to quit at once")

    if threading.current_thread() is threading.main_thread():  # signal handlers are the main thread's
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
