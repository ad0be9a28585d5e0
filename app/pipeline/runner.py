"""Launch the training flow as a subprocess with the right environment, and read its result.

Metaflow's local runtime needs a user name (CI may have no ``USER``, and it refuses
``root``) and a datastore; both are set here, under the var root, so a run never depends on
the caller's shell. Every setting reaches the flow through ``MOVIEREC_*`` environment
variables — secrets included — never through the command line, which other users of the
machine can read.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import getpass
import json
import logging
import os
import re
import shutil
import signal
import subprocess  # nosec B404
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import AliasChoices, SecretStr

from app.config import Settings
from app.secret_files import FILE_SUFFIX, SECRET_SETTINGS, SecretFileError, read_secret_file

log = logging.getLogger(__name__)

FLOW_MODULE = "app.pipeline.flow"
FLOW_NAME = "MovieRecTrainingFlow"
DEFAULT_METAFLOW_USER = "movierec"
LOCK_FILE = "flow.lock"
SCRATCH_PREFIX = "run-"  # <var>/pipeline/run-*: a flow's scratch directory (its summary, its run id)
STEP_SCRATCH = "tmp"  # <var>/pipeline/tmp: the flow's steps' scratch (publish-*, gate-*, summary-*)
STEP_SCRATCH_PREFIXES = ("publish-", "gate-", "summary-")
OWNER_FILE = "owner"  # a random id of the var root, created once: tags its flows' MLflow runs
FLOW_OWNER_ENV = "MOVIEREC_FLOW_OWNER"
STOPPING = threading.Event()
"""Set when the launcher is asked to stop (``movierec schedule`` or ``pipeline run`` got SIGTERM
or Ctrl-C: app/pipeline/schedule.py, stop_on_sigterm, through :func:`request_stop`): a running
flow is killed with its workers and reported, and no new one starts."""
_stop_signal = "SIGTERM"  # the signal that set STOPPING, as the reports name it
_flow: subprocess.Popen[str] | None = None  # the flow running now (_run), which force_quit kills
_flow_at_stop: subprocess.Popen[str] | None = None  # the flow running when the stop was asked


def request_stop(signal_name: str = "SIGTERM") -> None:
    """Set :data:`STOPPING`, noting the signal that asked and the flow then running (what the
    stop kills: :func:`flow_at_stop`). A signal handler's whole work: it takes no lock
    (app/pipeline/schedule.py, stop_on_sigterm, says why)."""
    global _stop_signal, _flow_at_stop
    _stop_signal = signal_name
    _flow_at_stop = running_flow()
    STOPPING.set()


def flow_at_stop() -> subprocess.Popen[str] | None:
    """The flow that was running when the stop was asked (the stop kills it), or None. Asked
    after the stop, :func:`running_flow` may already be None: the flow's wait kills it within
    half a second, and the launcher's messages would then say that none ran."""
    return _flow_at_stop


def running_flow() -> subprocess.Popen[str] | None:
    """The flow this launcher runs now (not yet reaped: a zombie's pid is not reused), or None.
    Takes no lock: the signal handlers ask it."""
    flow = _flow
    return flow if flow is not None and flow.returncode is None else None


def force_quit(signal_name: str = "SIGINT") -> NoReturn:
    """End the launcher at once (a second Ctrl-C: the user will not wait for the stop the first
    one asked for): SIGKILL the flow running, if any, with its workers, as the stop would, say
    so on stderr and exit 130 (128 + SIGINT, as a shell reports a job ended by Ctrl-C).

    Called from a signal handler: it takes no lock (no logging, no Popen method; the message is
    one ``os.write``) and skips every cleanup, which the next run does (its MLflow runs left
    RUNNING are marked KILLED, its ``run-*`` scratch directory removed). The flow lock is the
    kernel's: it is released once the launcher and its flow are dead.
    """
    flow = running_flow()
    if flow is not None:
        _kill_with_workers(flow.pid)
        done = f"; killed the training flow (pid {flow.pid}) and its workers"
    else:
        done = " (no training flow running)"
    say(
        f"{signal_name} again: quitting at once{done}. What the stop left undone the next run does: "
        "it marks MLflow runs left RUNNING KILLED and removes scratch directories left in var/pipeline"
    )
    os._exit(128 + signal.SIGINT)


def say(text: str) -> None:
    """Write one line to stderr without a lock (from a signal handler): one ``os.write``."""
    with contextlib.suppress(OSError):
        os.write(2, f"movierec: {text}\n".encode())


def _stopped(done: str = "the training flow was killed with its workers") -> str:
    return f"the launcher was asked to stop ({_stop_signal}): {done}"


def check_stop(during: str) -> None:
    """PipelineError with the stop's message when :data:`STOPPING` is set: the launcher's own long
    work before a flow (the decision's ingest, app/pipeline/schedule.py) calls it at points where
    stopping leaves nothing half done, as the wait for a flow looks at the flag every 0.5 s."""
    if STOPPING.is_set():
        raise PipelineError(_stopped(f"stopped during {during}; the training flow was not started"))


_POLL_SECONDS = 0.5  # how often a launcher waiting for its flow looks at STOPPING
RELEASE_UNFINISHED = "release_unfinished"
"""Key of the summary the flow's release step hands over as soon as it exported the champion's
bundle (app/pipeline/flow.py, ``_export``), before the service's reload: the flow ending before the
release step's own summary replaces it is reported as a :class:`BookkeepingError` saying what moved."""
REFUSED = "refused"
"""Key of what the flow hands over when its first step refuses the data (too little for a split
of the run's seeds: app/pipeline/flow.py, ``_refuse_too_little``): the launcher's whole error, one
line. Nothing was trained, written or recorded as a run (no MLflow run was opened)."""
UNFINISHED_AFTER_MOVE = (
    "during its release step, after exporting the champion's bundle to the model store (asking the "
    "service to reload it, removing old bundles and closing the MLflow pipeline run were left undone)"
)


class PipelineError(RuntimeError):
    """The flow failed; the message carries the tail of its output, scrubbed: a flow that lost
    its tracking server printed MLflow's error, which names the request's URL with its password,
    and the launcher's Error: line, the scheduler's log line and its alert carried it on."""

    def __init__(self, message: str) -> None:
        from app.monitoring.logs import scrub_text

        super().__init__(scrub_text(message))


class DataRefusedError(PipelineError):
    """The flow's first step refused the data (:data:`REFUSED`: too little for a split of the run's
    seeds); the message is its one line, naming the data hash. Nothing was trained or recorded."""


class BookkeepingError(PipelineError):
    """The flow released its models — the gate decided, the champion may have moved and been
    exported and reloaded — and failed afterwards (closing its MLflow run, or Metaflow's own
    end of the run). ``summary`` says what the release did; the message says both."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def version_label(version: object) -> str:
    """``v3`` for a registered version, ``none`` when there is none (a first run's champion before
    it, a run whose every candidate was rejected): never ``vNone``."""
    return "none" if version is None else f"v{version}"


def export_outcome(summary: dict[str, Any], separator: str = ", ") -> str:
    """What a run did to the model store and the service: ``exported: <bundle>, reloaded: <answer>``,
    or ``exported: no change (no reload asked)``. A run that exported nothing asked for no reload;
    its ``reloaded: False`` read as a reload that failed."""
    exported = summary.get("exported")
    if not exported:
        return "exported: no change (no reload asked)"
    return f"exported: {exported}{separator}reloaded: {summary.get('reloaded')}"


def released_but(summary: dict[str, Any], failure: str) -> str:
    """What a flow whose bookkeeping failed after its release did, then what failed."""
    champion, before = summary.get("champion"), summary.get("champion_before")
    exported = summary.get("exported")
    if summary.get("promoted"):
        done = f"the champion is now v{champion} (promoted by this run; before: {version_label(before)})"
    else:
        done = f"the champion stays v{champion}" if champion else "there is no champion"
    done += f", its bundle exported to {exported}" if exported else ", the model store unchanged"
    done += f", service reloaded: {summary.get('reloaded')}" if exported else ""
    if summary.get("bookkeeping_error") or summary.get(RELEASE_UNFINISHED):  # the MLflow run was left open
        after = (
            "the MLflow pipeline run is marked FAILED (or KILLED by the next flow when the registry "
            "cannot be reached now), so the next scheduler tick trains again"
        )
    else:  # release closed it as finished; only a RUNNING run is marked FAILED
        after = (
            "the MLflow pipeline run was closed as finished before that, so the next scheduler tick "
            "trains only when the data or the code changed"
        )
    return (
        f"the training flow released its models ({done}), but its bookkeeping failed afterwards: "
        f"{failure}; {after}"
    )


@dataclass(frozen=True)
class FlowRun:
    summary: dict[str, Any]
    seconds: float
    output: str


def resolve_candidates(value: str | Sequence[str] | None) -> list[str]:
    """Candidate names from a comma-separated string, or the models package's defaults.

    Names are checked against ``CANDIDATES`` so a typo fails the run before any training.
    """
    from app.recommender.models import CANDIDATES, DEFAULT_CANDIDATES

    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = list(value or ())
    names = names or list(DEFAULT_CANDIDATES)
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(sorted(CANDIDATES))}")
    return list(dict.fromkeys(names))


def longest_first(names: Sequence[str], seconds: dict[str, float]) -> list[str]:
    """Candidates by their last known training time, longest first; unknown ones lead.

    With fewer workers than candidates this is the classic longest-processing-time rule:
    the slowest job never starts last and leaves the other workers idle at the end.
    """
    return sorted(names, key=lambda name: -seconds.get(name, float("inf")))


def features_root(settings: Settings) -> str:
    """The features store root: the setting, else ``<data_dir>/features``."""
    return settings.features_root or str(Path(settings.data_dir) / "features")


class FeaturesRootError(ValueError):
    """fsspec cannot open the features store root: a protocol it does not know, or one whose
    filesystem package (s3fs for ``s3://``, gcsfs, …) is not installed."""


def features_filesystem(root: str) -> tuple[Any, str]:
    """fsspec's filesystem of the features store ``root`` and the path in it.

    A root fsspec cannot open is a :class:`FeaturesRootError` naming it: fsspec's own ImportError
    ("Install s3fs to access S3") or ValueError ("Protocol not known") was a traceback of `movierec
    sql` and `features build`, and failed the training flow in its features step, after its ingest.
    """
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as exc:
        raise FeaturesRootError(f"the features store {root} cannot be opened: {exc}") from exc
    return fs, path


def _env_names(name: str, field: Any) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"MOVIEREC_{name.upper()}"]


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return json.dumps(value, default=str)


def _file_holding(env: dict[str, str], names: Sequence[str], value: str) -> tuple[str, str] | None:
    """The ``<variable>_FILE`` of ``names`` set in ``env`` (its absolute path: the flow may run
    elsewhere) whose file holds ``value``, if any."""
    for env_name in names:
        variable = env_name + FILE_SUFFIX
        if env.get(variable):
            try:
                if read_secret_file(env[variable], variable) == value:
                    return variable, os.path.abspath(env[variable])
            except SecretFileError:
                pass  # unreadable now: the value read at start is passed instead
    return None


def flow_environment(
    settings: Settings, base: dict[str, str] | None = None, workers: int | None = None
) -> dict[str, str]:
    """The subprocess environment: settings as MOVIEREC_* variables plus Metaflow's own.

    A setting that is None is removed from the environment, so it reaches the flow as its
    default — settings whose default is not None therefore never use None ("" instead). A
    secret read from a file (``<variable>_FILE``, app/secret_files.py) reaches the flow as that
    file, so that no process's environment holds it (docker-compose.yml's /run/secrets); one
    whose value is no longer the file's is passed as its value, without the file, which the
    flow would refuse beside it.
    """
    env = dict(os.environ if base is None else base)
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        names = _env_names(name, field)
        secret_file = None
        if name in SECRET_SETTINGS and value is not None:
            secret_file = _file_holding(env, names, _env_value(value))
        for env_name in names:
            env.pop(env_name, None)
            if name in SECRET_SETTINGS:
                env.pop(env_name + FILE_SUFFIX, None)
        if secret_file is not None:
            env[secret_file[0]] = secret_file[1]
        elif value is not None:
            for env_name in names:  # every alias, so none of them can shadow the value
                env[env_name] = _env_value(value)
    metaflow_root = (Path(settings.var_dir) / "metaflow").resolve()
    env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(metaflow_root)
    env["METAFLOW_HOME"] = str(metaflow_root / "home")
    env["METAFLOW_DEFAULT_DATASTORE"] = "local"
    env["METAFLOW_DEFAULT_METADATA"] = "local"
    env["METAFLOW_USER"] = env.get("METAFLOW_USER") or _metaflow_user()
    if workers:
        # Parallel candidates each get their share of the cores instead of all of them
        # (NumPy/BLAS, LightGBM's OpenMP), unless the caller chose otherwise.
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _metaflow_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no USER/LOGNAME: CI containers
        user = ""
    return user if user and user != "root" else DEFAULT_METAFLOW_USER


def flow_command(
    candidates: Sequence[str] | None, seeds: Sequence[int] | None, summary: Path, run_id_file: Path,
    trigger: str, max_workers: int,
) -> list[str]:  # fmt: skip
    command = [
        sys.executable, "-m", FLOW_MODULE, "--no-pylint", "--quiet", "run",
        "--max-workers", str(max_workers), "--run-id-file", str(run_id_file),
        "--summary-path", str(summary), "--trigger", trigger,
    ]  # fmt: skip
    if candidates:
        command += ["--candidates", ",".join(candidates)]
    if seeds:
        command += ["--seeds", ",".join(str(s) for s in seeds)]
    return command


def run_flow(
    settings: Settings,
    candidates: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    trigger: str = "manual",
    max_workers: int | None = None,
    stream: bool = False,
    timeout: float | None = None,
) -> FlowRun:
    """Run the whole flow once and return its summary; PipelineError when it fails.

    BookkeepingError (a PipelineError carrying the summary) when it failed only after its
    ``release`` step handed over the summary, or the summary says closing the MLflow run
    failed: the champion may have moved, and the error says so rather than "failed".

    ``stream`` passes the flow's output through to this process's stdout (the CLI);
    otherwise it is captured and returned (tests, the scheduler's log). A flow still running
    after ``timeout`` seconds (default: ``MOVIEREC_PIPELINE_TIMEOUT_SECONDS``, 0 = none) is
    killed with its workers: a PipelineError saying it timed out (a BookkeepingError when its
    release step had handed over the summary). So is a flow running when :data:`STOPPING` is
    set, and none starts once it is. Without a default a hung flow held the flow lock for good,
    and the scheduler dropped every later tick.

    After a successful flow, still under the lock, the MLflow and Metaflow runs older than the
    newest ``MOVIEREC_PIPELINE_KEEP_RUNS`` are removed (app/pipeline/retention.py; a failure there
    is logged, never raised).
    """
    if timeout is None:
        timeout = settings.pipeline_timeout_seconds or None
    if STOPPING.is_set():
        raise PipelineError(_stopped("the training flow was not started"))
    if candidates:
        resolve_candidates(candidates)  # fail fast on a typo, before any subprocess
    try:  # and on a features store it cannot open, which the flow met after its ingest
        features_filesystem(features_root(settings))
    except FeaturesRootError as exc:
        raise PipelineError(str(exc)) from exc
    from app.recommender.data import DataUnavailableError, detect_layout

    try:  # and on a data dir holding part of a layout, which its ingest met in a traceback
        detect_layout(Path(settings.data_dir))
    except DataUnavailableError as exc:
        raise PipelineError(str(exc)) from exc
    scratch_root = Path(settings.var_dir) / "pipeline"
    try:  # and on a var directory it cannot make or write, which was a traceback here
        scratch_root.mkdir(parents=True, exist_ok=True)
        if not os.access(scratch_root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(scratch_root))
    except OSError as exc:
        from app.recommender.data import mkdir_failure

        raise PipelineError(
            f"the var directory {settings.var_dir} (MOVIEREC_VAR_DIR) cannot be written: "
            f"{exc.filename or scratch_root}: {mkdir_failure(exc)}"
        ) from exc
    workers = max_workers or max(1, os.cpu_count() or 1)
    with flow_lock(settings, holder="another training flow is running") as lock:
        # under the lock: no flow of this var root runs, so every scratch directory there is a leftover
        _remove_abandoned_scratch(scratch_root)
        _remove_abandoned_step_scratch(scratch_root / STEP_SCRATCH)
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch_root) as scratch:
            owner = flow_owner(settings)
            _close_abandoned(settings, owner)
            # a release killed between latest and the alias: serve the champion the gate compares with
            repair_release(settings, locked=True)
            summary_path = Path(scratch) / "summary.json"
            run_id_file = Path(scratch) / "run-id"
            command = flow_command(candidates, seeds, summary_path, run_id_file, trigger, workers)
            env = flow_environment(settings, workers=workers)
            env[FLOW_OWNER_ENV] = owner
            started = time.perf_counter()
            log.info("starting the training flow (%s)", trigger)
            returncode: int | None  # None: killed, at its timeout or when the launcher was stopped
            killed = None
            try:
                returncode, output = _run(command, env, timeout, stream, lock)
            except FlowKilled as exc:
                returncode, output, killed = None, exc.output, exc.why
            if returncode not in (0, None) and STOPPING.is_set():
                # Ctrl-C reaches the flow too (the terminal's process group): it died of the signal
                # that stops the launcher, rather than of a failure of its own.
                returncode, killed = None, _stopped()
            seconds = time.perf_counter() - started
            summary = _handed_over(summary_path)
            if summary is not None and summary.get(REFUSED):  # its reason is whole: no output tail
                raise DataRefusedError(str(summary[REFUSED]))
            unfinished = summary is not None and summary.get(RELEASE_UNFINISHED)
            if returncode != 0 or summary is None or summary.get("bookkeeping_error") or unfinished:
                _mark_failed(settings, run_id_file)
                # Streamed output is on the terminal already; captured output is shown from its end.
                tail = "" if stream else "\n" + "\n".join(output.strip().splitlines()[-40:])
                raise _failure(returncode, summary, output, seconds, killed, tail)
            log.info("training flow finished in %.1fs", seconds)
            # still under the lock: no flow of this var root, nor a promote, uses what goes
            from app.pipeline.retention import apply_retention

            apply_retention(settings, owner, str(summary.get("metaflow_run_id") or "") or None)
    return FlowRun(summary, seconds, output)


def _handed_over(summary_path: Path) -> dict[str, Any] | None:
    """The summary the flow's release step handed over, or None (it never got there)."""
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except ValueError:  # killed while writing it
        return None
    return summary if isinstance(summary, dict) else None


def _failure(
    returncode: int | None,
    summary: dict[str, Any] | None,
    output: str,
    seconds: float,
    killed: str | None,
    tail: str,
) -> PipelineError:
    """What the launcher reports of a failed flow (``returncode`` None: killed, ``killed`` says
    why): a BookkeepingError when its release step had handed over the summary (the champion may
    have moved, the summary says), else a PipelineError; ``tail`` is appended to the message."""
    cause = failure_cause(output)
    because = f": {cause}" if cause else ""
    if summary is not None:  # where the flow was when it ended: after its release step, or during it
        when = str(summary.get(RELEASE_UNFINISHED) or "after its release step")
    if returncode is None:
        failure = killed or "the training flow was killed with its workers"
        if summary is None:
            return PipelineError(failure + tail)
        failure += f" {when}"
    elif summary is None:
        return PipelineError(
            f"the training flow failed (exit {returncode}) after {seconds:.0f}s{because}" + tail
        )
    else:
        failure = summary.get("bookkeeping_error") or f"the flow ended with exit {returncode} {when}{because}"
    return BookkeepingError(released_but(summary, str(failure)) + tail, summary)


_OUTPUT_TAIL = 400  # lines kept of a streamed flow's output, to find the cause of a failure
_TASK_PREFIX = re.compile(r"^\S+ \S+ \[[^\]]*\] ?")  # Metaflow's "<date> <time> [run/step/task (pid N)] "
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: .*)?$")


def _run(
    command: list[str], env: dict[str, str], timeout: float | None, stream: bool, lock: int | None = None
) -> tuple[int, str]:
    """Run the flow; its output is captured, or shown as it comes and its tail kept (``stream``).

    ``lock``, the flow lock's descriptor, is passed down: the flow holds the lock too, so a
    launcher killed outright (its flow, another process, goes on to gate and move the
    champion alias) does not let the next run start beside it.
    """
    # A fixed argument list (sys.executable -m app.pipeline.flow …), no shell.
    pass_fds = (lock,) if lock is not None else ()
    process = subprocess.Popen(  # nosec B603
        command, env=env, cwd=os.getcwd(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
    )  # fmt: skip
    global _flow
    _flow = process  # a second Ctrl-C kills it (force_quit)
    try:
        return _follow(process, timeout, stream)
    finally:
        _flow = None


def _follow(process: subprocess.Popen[str], timeout: float | None, stream: bool) -> tuple[int, str]:
    """Wait for the flow :func:`_run` started, killing it at its timeout or when STOPPING is set."""
    deadline = None if timeout is None else time.monotonic() + timeout
    if not stream:
        while True:  # in short waits, to see STOPPING (communicate keeps the output read so far)
            try:
                output, _ = process.communicate(timeout=_next_wait(deadline))
            except subprocess.TimeoutExpired:
                why = _kill_reason(deadline, timeout)
                if why is None:
                    continue
                _kill_tree(process)
                output, _ = process.communicate()
                raise FlowKilled(output or "", why) from None
            return process.returncode, output or ""
    kept: collections.deque[str] = collections.deque(maxlen=_OUTPUT_TAIL)

    def pump() -> None:
        for line in process.stdout or ():
            sys.stdout.write(line)
            sys.stdout.flush()
            kept.append(line)

    reader = threading.Thread(target=pump, name="flow-output", daemon=True)
    reader.start()
    try:
        while True:
            try:
                returncode = process.wait(timeout=_next_wait(deadline))
                break
            except subprocess.TimeoutExpired:
                why = _kill_reason(deadline, timeout)
                if why is None:
                    continue
                _kill_tree(process)
                reader.join(timeout=10)
                raise FlowKilled("".join(kept), why) from None
    finally:
        reader.join(timeout=10)
    return returncode, "".join(kept)


def _next_wait(deadline: float | None) -> float:
    """How long to wait for the flow before looking at STOPPING and the deadline again."""
    return _POLL_SECONDS if deadline is None else max(0.0, min(_POLL_SECONDS, deadline - time.monotonic()))


def _kill_reason(deadline: float | None, timeout: float | None) -> str | None:
    """Why the flow must be killed now (the launcher stopping, its timeout past), or None."""
    if STOPPING.is_set():
        return _stopped()
    if deadline is not None and time.monotonic() >= deadline:
        return f"the training flow timed out after {timeout:g}s and was killed with its workers"
    return None


class FlowKilled(Exception):  # run_flow reports it as a PipelineError
    """The flow was killed with its workers (its timeout, or the launcher stopping): ``why`` says
    which, ``output`` is what it printed."""

    def __init__(self, output: str, why: str) -> None:
        super().__init__(why)
        self.output = output
        self.why = why


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux ``/proc``; none where it is absent)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _kill_tree(process: subprocess.Popen[str]) -> None:
    """SIGKILL the flow and the workers it started (Metaflow's tasks), and reap it."""
    _kill_with_workers(process.pid)
    process.wait()


def _kill_with_workers(pid: int) -> None:
    """SIGKILL the flow ``pid`` and the workers it started: killed alone, its workers would go on
    training (and holding the flow lock, which they inherit) with nobody to wait for them. The
    workers are listed first: once the flow is dead they are no longer its children. Takes no
    lock (system calls and ``/proc`` only): :func:`force_quit` calls it from a signal handler."""
    workers = _descendants(pid)
    for target in (pid, *workers):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


def failure_cause(output: str) -> str | None:
    """The last exception line a failed flow printed ("OperationalError: connection …"), or None."""
    for line in reversed(output.splitlines()):
        text = _TASK_PREFIX.sub("", line).strip()
        if _EXCEPTION_LINE.match(text):
            return text
    return None


@contextlib.contextmanager
def flow_lock(
    settings: Settings, busy: str = "another training flow is running", holder: str | None = None
) -> Iterator[int]:
    """Hold the var root's flow lock for one run; PipelineError at once when another run holds it.

    Two flows on one registry at the same time (the scheduler's tick and an operator's
    ``movierec pipeline run``, or two ``schedule --once`` from cron) each read the champion,
    gate against it and move the alias: the one that finishes last wins, so a worse model
    could become champion without ever being compared with the better one promoted a moment
    before. APScheduler's ``max_instances`` only covers one process; this lock (``flock``,
    released by the kernel when the holder dies, so it never goes stale) covers every process
    sharing the var root. ``movierec promote`` takes it too (``busy`` says why it waits): a
    flow's gate would move the alias after it. Yields the lock file's descriptor, which
    :func:`run_flow` hands to the flow's process so the lock lasts as long as either lives.

    ``holder`` says what holds it (what a refused caller is told is running: ``busy`` only when
    the holder recorded none); it is written into the lock file with the process's id, its
    command and the time it was taken.
    """
    path = Path(settings.var_dir) / "pipeline" / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineError(
                f"{_lock_holder(path) or busy} (lock {path}); try again when it has finished"
            ) from exc
        handle.truncate(0)  # what the previous holder wrote is no longer true
        if holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            handle.write(f"{holder}; pid {os.getpid()}, `{_command_name()}`, since {since}\n")
        handle.flush()
        # No explicit unlock: closing this descriptor drops the lock only once the flow's copy
        # is closed too, so a launcher interrupted while its flow still cleans up keeps it held.
        yield handle.fileno()


def _lock_holder(path: Path) -> str:
    """What the flow lock's holder recorded ("" when nothing: an older release, or not written yet)."""
    try:
        with path.open(errors="replace") as handle:
            return handle.readline(500).strip()
    except OSError:
        return ""


def _command_name() -> str:
    """This process's command without its options and their values (``movierec pipeline run``)."""
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
    for word in sys.argv[1:3]:
        if word.startswith("-"):
            break
        words.append(word)
    return " ".join(words)


def flow_owner(settings: Settings) -> str:
    """The var root's id (created on first use): the flows of one var root tag their runs with it.

    Neither the host name (a container's changes when it is recreated) nor the path (another
    machine may use the same one against a shared tracking server) tells whose a run is.
    """
    path = Path(settings.var_dir) / "pipeline" / OWNER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        owner = path.read_text().strip()
    except FileNotFoundError:
        owner = ""
    if len(owner) == 32 and all(c in "0123456789abcdef" for c in owner):
        return owner
    owner = uuid.uuid4().hex
    staging = path.with_name(f".{OWNER_FILE}-{owner}")
    staging.write_text(owner + "\n")
    os.replace(staging, path)
    return owner


def _close_abandoned(settings: Settings, owner: str) -> None:
    """Mark KILLED the MLflow runs of this var root's earlier flows that nobody closed.

    A launcher killed outright (SIGKILL, the OOM killer, a reboot) never reaches
    :func:`_mark_failed`; with the flow lock held now, no run of ours can still be going.

    PipelineError when the registry cannot be reached at all: the flow's first step needs
    it, and with MLflow's retries (about 4 minutes a request to a tracking server that is
    down) launching the flow only made the operator wait longer for the same error.
    """
    from app.monitoring.logs import scrub_text
    from app.registry.mlflow_registry import Registry, RegistryError

    try:
        registry = Registry.from_settings(settings)
    except RegistryError as exc:  # the var root's store cannot be created: the message says why
        raise PipelineError(str(exc)) from exc
    try:
        registry.experiment_id  # noqa: B018 - the first request: is the registry there at all?
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PipelineError(
            f"cannot reach the model registry at {registry.display_uri}: {scrub_text(reason)}"
        ) from exc
    try:
        closed = registry.close_abandoned_runs(owner)
    except Exception:
        log.exception("could not close the MLflow runs of earlier flows that were killed")
        return
    if closed:
        log.warning("marked %d MLflow runs of killed flows KILLED: %s", len(closed), ", ".join(closed))
    _abandon_pending(registry)


def _abandon_pending(registry: Any) -> None:
    """Mark ``abandoned`` the versions that ended flows left ``pending`` (never raises: the
    flow's own work does not depend on it)."""
    try:
        abandoned = registry.abandon_pending_versions()
    except Exception:
        log.exception("could not mark the pending versions of ended pipeline runs abandoned")
        return
    if abandoned:
        log.warning(
            "versions %s were left pending by pipeline runs that ended before the gate decided: "
            "marked abandoned (movierec promote refuses them unless --force)",
            ", ".join(abandoned),
        )


REPAIR_HOLDER = (
    "a scheduler tick is checking that the model store serves the registry's champion, which may "
    "mean downloading its bundle from the tracking server"
)
"""What :func:`repair_release` records holding the flow lock: a promote refused meanwhile says so."""


def repair_release(settings: Settings, *, locked: bool = False) -> bool:
    """Finish the hand-over of a release killed between moving ``latest`` and the champion alias.

    :func:`~app.registry.export.repair_served_champion` under the flow lock (``locked``: the
    caller holds it, :func:`run_flow`): a flow or ``movierec promote`` running now is between
    those steps on purpose, and this tick leaves it alone (its release completes or undoes it).
    When ``latest`` was pointed back at the champion's bundle, the service is asked to reload it
    (workers started since the kill loaded the other one; a failure is remembered for the next
    tick: :func:`~app.registry.export.reload_service`). Returns whether it asked; never raises:
    the run or the tick goes on, and the next one tries again.
    """
    from app.registry.export import reload_service, repair_served_champion
    from app.registry.mlflow_registry import Registry, RegistryError

    latest = Path(settings.model_dir) / "latest"
    try:
        with flow_lock(settings, holder=REPAIR_HOLDER) if not locked else contextlib.nullcontext(-1):
            mismatch = repair_served_champion(Registry.from_settings(settings), settings.model_dir)
    except PipelineError:  # the lock is held: a release under way, not a killed one
        log.info("a training flow or a promotion is running: not checking the model store's latest now")
        return False
    except RegistryError as exc:  # the registry cannot be read, the champion's bundle not exported
        log.warning("could not check whether %s serves the registry's champion: %s", latest, exc)
        return False
    except Exception:
        log.exception("could not check whether %s serves the registry's champion", latest)
        return False
    if mismatch is None or mismatch.champion is None:
        return False
    reload_service(settings, mismatch.champion.bundle_version)
    return True


def _remove_abandoned_scratch(scratch_root: Path) -> None:
    """Remove the scratch directories (``run-*``) that earlier launchers left in ``scratch_root``.

    A launcher killed outright (SIGKILL, the OOM killer, a reboot) never leaves its
    TemporaryDirectory, which stayed there for good. Called with the flow lock held: the flow of
    a launcher killed outright holds the lock until it ends too, so none of them is in use.
    A directory that cannot be removed is logged, and the run goes on.
    """
    removed = []
    for path in sorted(scratch_root.glob(SCRATCH_PREFIX + "*")):
        if path.is_symlink() or not path.is_dir():
            continue  # not made by TemporaryDirectory
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("could not remove the scratch directory %s of a killed flow: %s", path, exc)
            continue
        removed.append(path.name)
    if removed:
        log.warning(
            "removed %d scratch directories of killed launchers from %s: %s",
            len(removed), scratch_root, ", ".join(removed),
        )  # fmt: skip


def _remove_abandoned_step_scratch(step_scratch: Path) -> None:
    """Remove what the steps of flows killed with their workers left in ``step_scratch``.

    The steps write there (a candidate's bundle while it is published, every new version's bundle
    downloaded for the gate, the summary) and remove it in a ``finally`` that a SIGKILL (the
    launcher's timeout or stop, the OOM killer) never reaches: a set of bundles stayed there for
    good at each kill. Called with the flow lock held; only what nothing was written in for an
    hour goes (:func:`~app.recommender.bundle.remove_stale_leftovers`), so a flow started by hand
    (``python -m app.pipeline.flow run``, outside the lock) keeps its scratch.
    """
    import stat

    from app.recommender.bundle import Leftover, remove_stale_leftovers

    prefixes = "|".join(re.escape(prefix) for prefix in STEP_SCRATCH_PREFIXES)
    remove_stale_leftovers(step_scratch, (Leftover(re.compile(rf"\A(?:{prefixes})"), stat.S_ISDIR),))


def _mark_failed(settings: Settings, run_id_file: Path) -> None:
    """Close the MLflow runs (pipeline and candidates) of a failed flow as FAILED, so they never
    count as finished ones (the scheduler's skip check, the longest-first timings)."""
    if not run_id_file.is_file():
        return
    try:
        from app.registry.mlflow_registry import Registry

        registry = Registry.from_settings(settings)
        metaflow_run = run_id_file.read_text().strip()
        runs = registry.client.search_runs(
            [registry.experiment_id],
            filter_string=f"tags.metaflow_run_id = '{metaflow_run}'",
            max_results=500,
        )
        for run in runs:
            if run.info.status == "RUNNING":
                registry.client.set_terminated(run.info.run_id, "FAILED")
    except Exception:
        log.exception("could not mark the MLflow pipeline run of a failed flow")
        return
    _abandon_pending(registry)
