"""Follow journald and turn its entries into typed log entries.

Runs ``journalctl --output=json --follow`` with field matches as an argument list (no
shell), parses each JSON object, and understands the two kinds of MESSAGE our containers
produce: one of our JSON log lines (see ``app.monitoring.logs``) or plain text. The level
comes from, in order: the JSON line's ``level``; for plain text, a uwsgi request line's HTTP
status, a Python warning, a known crash marker (traceback, HARAKIRI, dead worker) or a level word at the start
("ERROR:", "[WARNING]", "2024-01-01 12:00:00 ERROR ..."); finally journald's PRIORITY (0-7).

Docker's journald driver gives stdout lines PRIORITY 6 and stderr lines PRIORITY 3, which is
why the JSON ``level`` wins over PRIORITY.

If journalctl exits (journald restarted, journal rotated away, killed), the follower starts
it again with exponential backoff, resuming after the last cursor it saw so nothing is
skipped or repeated. A journalctl that has delivered nothing for ``refresh_after`` seconds is
replaced the same way (without the backoff): one was seen to stop delivering while journald
kept storing entries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

log = logging.getLogger(__name__)

# syslog/journald priorities -> Python logging level names
PRIORITY_LEVELS = {
    0: "CRITICAL",  # emerg
    1: "CRITICAL",  # alert
    2: "CRITICAL",  # crit
    3: "ERROR",  # err
    4: "WARNING",  # warning
    5: "INFO",  # notice
    6: "INFO",  # info
    7: "DEBUG",  # debug
}
LEVEL_RANK = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LEVEL_ALIASES = {
    "WARN": "WARNING",
    "FATAL": "CRITICAL",
    "CRIT": "CRITICAL",
    "EMERG": "CRITICAL",
    "ALERT": "CRITICAL",
    "ERR": "ERROR",
    "NOTICE": "INFO",
    "TRACE": "DEBUG",
}
# A level word near the start of a plain-text line: "ERROR:app:...", "[WARNING] ...",
# "2024-05-01 10:00:00,123 ERROR app ...", "E 12:00 ..." is not matched on purpose.
_PLAIN_LEVEL = re.compile(
    r"^\W{0,3}(?:[\d\-:T.,+Z ]{8,40}\s*[|\-]?\s*)?\[?"
    r"(CRITICAL|FATAL|ERROR|ERR|WARNING|WARN|INFO|NOTICE|DEBUG|TRACE)\b",
    re.IGNORECASE,
)
_FIELD_NAME = re.compile(r"^[A-Z0-9_]+$")
# The level a JSON log line states near its start ({"ts":"...","level":"ERROR",...), read when the
# line is cut short and no longer JSON: a long line's chunks whose last one never came.
_CUT_JSON_LEVEL = re.compile(r'^\s*\{(?:"\w+":\s*"[^"\\]{0,64}",\s*){0,3}"level(?:name)?":\s*"(\w+)"')
# What --print writes as an escape: C0 but tab and line feed, DEL, C1 (format_line).
_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
MAX_JOINED_BYTES = 1 << 20
"""Longest line rebuilt from Docker's 16 kB partial entries before it is handed over as it is."""
TRACEBACK_HEADER = "Traceback (most recent call last):"
MAX_TRACEBACK_LINES = 1000
"""Most lines of a plain-text traceback held for one entry before it is handed over as it is."""
# uwsgi's request log line (it logs 4xx/5xx only, to stderr):
# "[pid: 7|app: 0|req: 3/9] 10.0.0.1 () {...} [...] GET /x => generated ... (HTTP/1.1 503) 4 headers
# in 150 bytes (1 switches on core 0)". The status is read from the line's end, which uwsgi
# writes itself: the protocol before it is the client's text as sent, spaces included, and a
# client whose protocol read "HTTP/1.1 500) x" made its 404 an ERROR line (an alert email at
# will), one whose protocol was not "HTTP/<digits>" left the line to Docker's stderr priority
# (ERROR too), and one that wrote "(HTTP/1.1 404)" hid a real 500.
_UWSGI_REQUEST = re.compile(r"^\[pid: \d+\|.*=> generated ")
_UWSGI_STATUS = re.compile(r" (\d{3})\) \d+ headers in \d+ bytes(?: \(\d+ switches on core \d+\))?$")
_UWSGI_TAIL = 120  # more than the longest tail _UWSGI_STATUS matches: searched there only


def uwsgi_request_status(message: str) -> str | None:
    """The HTTP status of a uwsgi request line ("503"), or None for any other line."""
    if not _UWSGI_REQUEST.match(message):
        return None
    status = _UWSGI_STATUS.search(message[-_UWSGI_TAIL:])
    return status.group(1) if status else None


# uwsgi's HTTP router on a client that went away (reset a kept-alive connection, or closed it
# while its answer was being written): the client's doing, not an error of the service. Not
# hr_instance_write, the router writing to a worker: a worker gone mid-request is an error.
# "[uwsgi-http key: ... client_addr: 10.0.0.1 client_port: 41145] hr_read(): Connection reset by peer [...]"
# Read from the line's end, which uwsgi writes: the key is the client's Host header, and one
# holding "client_addr: 1] hr_read(): Connection reset by peer" made the router's error about
# a worker gone mid-request (hr_instance_write) an INFO line.
_ROUTER_CLIENT_GONE = re.compile(
    r"^\[uwsgi-http key: .*client_addr: .*\] hr_(?:read|write)\(\): "
    r"(?:Connection reset by peer|Broken pipe) \[plugins/http/http\.c line \d+\]$"
)
# A request whose headers exceed uwsgi.ini's buffer-size, which any client can send at will: the
# worker skips it ("invalid request block size: 40248 (max 16384)...skip"), the client's doing as
# a 4xx is, and the router's read from that worker is reset. On stderr both were ERROR lines, two
# alert e-mails' worth per request. The reset is a WARNING: a worker closing a request unread,
# which a worker that died would also cause, but that one says so itself as an ERROR ("DAMN !
# worker ... died", "HARAKIRI ON WORKER").
_UWSGI_REQUEST_TOO_LARGE = re.compile(r"^invalid request block size: \d+ \(max \d+\)\.\.\.skip$")
_ROUTER_WORKER_RESET = re.compile(
    r"^\[uwsgi-http key: .*client_addr: .*\] hr_instance_read\(\): Connection reset by peer "
    r"\[plugins/http/http\.c line \d+\]$"
)
# uwsgi's own routine lines: its start banner, workers spawned, recycled (max-requests,
# reload-on-rss) and stopped. uwsgi writes them to stderr, which Docker's journald driver marks
# PRIORITY 3: graded by priority, every deployment, restart and worker recycle was an ERROR email.
_UWSGI_ROUTINE = re.compile(
    r"^(?:\[uWSGI\] getting \S+ configuration from |\*\*\* Starting uWSGI |\*\*\* Operational MODE: "
    r"|compiled with version: |os: |nodename: |machine: |clock source: |detected number of CPU cores: "
    r"|current working directory: |detected binary path: |detected max file descriptor number: "
    r"|your (?:processes number limit|memory page size|server socket listen backlog|mercy for graceful) "
    r"|lock engine: |thunder lock: |uWSGI http bound on |setting abstract socket mode "
    r"|uwsgi socket \d+ bound to |Python version: |Python main interpreter initialized at "
    r"|python threads support enabled|mapped \d+ bytes |spawned uWSGI (?:master|worker|http) "
    r"|running \"[^\"]*\" \(master-start\)|WSGI app \d+ \(mountpoint='[^']*'\) ready in "
    r"|\.\.\.The work of process \d+ is done\. Seeya!|worker \d+ killed successfully "
    r"|Respawned uWSGI worker |.* - graceful shutdown triggered|Gracefully killing worker "
    r"|gateway \"[^\"]*\" has been buried|goodbye to uWSGI\.|uWSGI running as root"
    r"|VACUUM: unix socket \S+ removed\.$"
    # the master making the workers' socket directory (uwsgi.ini: socket) and removing it at exit
    # and reload (exec-as-user-atexit); a command that fails is logged as such and stays an error
    r"|subprocess \d+ exited with code 0$|running \"rm -f -- .*\" \(as uid: \d+ gid: \d+\) \.\.\.$"
    r"|!!! no internal routing support"
    # a graceful reload (SIGHUP): the master re-executes itself and respawns the workers
    r"|\.\.\.gracefully killing workers\.\.\.$|worker \d+ buried after \d+ seconds$"
    r"|binary reloading uWSGI\.\.\.$"
    r"|chdir\(\) to |closing all non-uwsgi socket fds > 2 |found fd \d+ mapped to socket \d+ "
    r"|running \S*uwsgi$|uwsgi socket \d+ inherited |gracefully \(RE\)spawned uWSGI master process "
    # uwsgi warns at every start of uwsgi.ini, which keeps harakiri on and post-buffering 0 on
    # purpose (see its comment there: post-buffering moved the shared harakiri deadline and got
    # busy workers killed); no option silences it without one of the two, and as a WARNING every
    # start and restart mailed it under --notify-warning. Only this exact text: any other
    # "*** WARNING:" line, this one's siblings included, stays a WARNING.
    r"|\s*\*\*\* WARNING: you have enabled harakiri without post buffering\. "
    r"Slow upload could be rejected on post-unbuffered webservers \*\*\*\s*$)"
)
_UWSGI_WARNING = re.compile(r"^\s*\*\*\* WARNING: ")
# Python's warnings module writes "path:line: Category: message" to stderr, then the source line
# indented (when it has it): "app.py:12: RuntimeWarning: divide by zero encountered in log".
_PYTHON_WARNING = re.compile(r"^.+?:\d+: [A-Za-z_]\w*Warning: ")
# Plain-text lines that mean trouble whatever stream they came from.
_PLAIN_ERROR = re.compile(
    r"^(?:Traceback \(most recent call last\)|.*\*\*\* HARAKIRI|DAMN ! worker|!!! uWSGI process"
    r"|.*Segmentation fault|.*MemoryError\b|Fatal Python error)"
)


def normalize_level(value: Any) -> str | None:
    """Map 'warn', 'Error', 40 ... to one of DEBUG/INFO/WARNING/ERROR/CRITICAL, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        for name, rank in sorted(LEVEL_RANK.items(), key=lambda kv: -kv[1]):
            if value >= rank:
                return name
        return "DEBUG"
    if not isinstance(value, str):
        return None
    name = value.strip().upper()
    name = _LEVEL_ALIASES.get(name, name)
    return name if name in LEVEL_RANK else None


@dataclass(frozen=True)
class JournalEntry:
    """One journal entry, with our structured log fields when the MESSAGE was a JSON line."""

    message: str
    level: str
    priority: int | None
    timestamp: dt.datetime
    cursor: str | None
    container_name: str | None = None
    identifier: str | None = None
    logger: str | None = None
    fields: Mapping[str, Any] | None = None  # the parsed JSON log line, if it was one
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_structured(self) -> bool:
        return self.fields is not None

    @property
    def rank(self) -> int:
        return LEVEL_RANK.get(self.level, 20)

    def at_least(self, level: str) -> bool:
        return self.rank >= LEVEL_RANK[level]

    def format_line(self) -> str:
        """A one-line human rendering for ``--print``, control characters but tab and line feed
        written as their escapes: an entry's ESC sequences (a JSON line's "\\u001b" is a real ESC
        once parsed) reached the operator's terminal, which they could retitle or clear, and a
        carriage return printed over the line."""
        source = self.container_name or self.identifier or "-"
        who = f" {self.logger}:" if self.logger else ""
        when = self.timestamp.isoformat(timespec="milliseconds")
        line = f"{when} {source} {self.level}{who} {self.message}"
        return _TERMINAL_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


def _field_text(value: Any) -> str | None:
    """journalctl prints binary/non-UTF-8 values as byte arrays and repeated fields as lists."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return bytes(value).decode("utf-8", "replace")
        texts = [t for t in (_field_text(v) for v in value) if t is not None]
        return texts[-1] if texts else None
    return str(value)


def _field_bytes(value: Any) -> bytes:
    """A field's raw bytes (journalctl prints non-UTF-8 values as byte arrays)."""
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return bytes(value)
    return (_field_text(value) or "").encode("utf-8", "replace")


def plain_text_level(message: str) -> str | None:
    """The level a plain-text line states or implies, or None to let PRIORITY decide.

    uwsgi request lines are graded by HTTP status (5xx is an error, 4xx is a client's
    problem), because Docker marks every stderr line PRIORITY 3 and uwsgi logs to stderr; the
    HTTP router's note of a client that went away, and a worker's refusal of a client's headers
    over buffer-size, are INFO (the router's reset read from that worker a WARNING).
    """
    status = uwsgi_request_status(message)
    if status:
        return "ERROR" if status.startswith("5") else "INFO"
    if _ROUTER_CLIENT_GONE.match(message) or _UWSGI_REQUEST_TOO_LARGE.match(message):
        return "INFO"
    if _ROUTER_WORKER_RESET.match(message):
        return "WARNING"
    if _PYTHON_WARNING.match(message):
        return "WARNING"
    if _PLAIN_ERROR.match(message):
        return "ERROR"
    if _UWSGI_ROUTINE.match(message):
        return "INFO"
    if _UWSGI_WARNING.match(message):
        return "WARNING"
    match = _PLAIN_LEVEL.match(message)
    return normalize_level(match.group(1)) if match else None


def json_log_fields(message: str) -> dict[str, Any] | None:
    """The fields of a structured (JSON) log line, or None when the message is not one."""
    stripped = message.lstrip()
    if not stripped.startswith("{"):
        return None
    try:
        doc = json.loads(stripped)
    except (ValueError, RecursionError):  # deeply nested "[[[[..." text: not a log line
        return None
    if isinstance(doc, dict) and ("level" in doc or "message" in doc or "msg" in doc):
        return doc
    return None


def parse_entry(raw: Mapping[str, Any]) -> JournalEntry:
    """Build a :class:`JournalEntry` from one ``journalctl -o json`` object."""
    message = _field_text(raw.get("MESSAGE")) or ""
    message = message.rstrip("\n")
    priority: int | None
    try:
        priority = int(_field_text(raw.get("PRIORITY")) or "")
    except ValueError:
        priority = None
    micros = _field_text(raw.get("__REALTIME_TIMESTAMP"))
    try:
        timestamp = dt.datetime.fromtimestamp(int(micros or "") / 1e6, tz=dt.UTC)
    except ValueError:
        timestamp = dt.datetime.now(dt.UTC)

    level: str | None = None
    logger: str | None = None
    text = message
    fields = json_log_fields(message)
    if fields is not None:
        level = normalize_level(fields.get("level", fields.get("levelname")))
        logger = fields.get("logger") if isinstance(fields.get("logger"), str) else None
        body = fields.get("message", fields.get("msg"))
        text = body if isinstance(body, str) else message
    if level is None and fields is None:
        cut = _CUT_JSON_LEVEL.match(message)
        level = normalize_level(cut.group(1)) if cut else plain_text_level(message)
    if level is None:
        level = PRIORITY_LEVELS.get(priority, "INFO") if priority is not None else "INFO"
    return JournalEntry(
        message=text,
        level=level,
        priority=priority,
        timestamp=timestamp,
        cursor=_field_text(raw.get("__CURSOR")),
        container_name=_field_text(raw.get("CONTAINER_NAME")),
        identifier=_field_text(raw.get("SYSLOG_IDENTIFIER")),
        logger=logger,
        fields=fields,
        raw=dict(raw),
    )


@dataclass
class _HeldTraceback:
    """The lines of a plain-text traceback so far, its first entry and its latest one."""

    first: dict[str, Any]
    lines: list[str]
    at: float  # time.monotonic() of the latest line
    last: dict[str, Any] = field(default_factory=dict)

    def joined(self) -> dict[str, Any]:
        """One entry: the first line's time, the last line's cursor, the lines as its MESSAGE."""
        return {**self.first, **self.last, "MESSAGE": "\n".join(self.lines),
                "__REALTIME_TIMESTAMP": self.first.get("__REALTIME_TIMESTAMP")}  # fmt: skip


@dataclass
class _HeldChunks:
    """Docker's 16 kB chunks of one long line so far, and the latest of them."""

    last: dict[str, Any]
    parts: list[bytes]
    at: float  # time.monotonic() of the latest chunk

    def joined(self) -> dict[str, Any]:
        """One entry: the latest chunk's fields (its cursor), the chunks together as its MESSAGE."""
        return {**self.last, "MESSAGE": b"".join(self.parts).decode("utf-8", "replace")}


class JournalFollower:
    """Follow journald entries matching field filters, restarting journalctl when it exits.

    ``matches``: journal field matches, e.g. ``{"CONTAINER_NAME": "movierec"}`` (ANDed).
    ``since_cursor``: resume after this cursor; otherwise after the newest entry :meth:`any_entry`
    found, or at the end of the journal (``--lines=0``), i.e. only entries written from now on.
    Iterate :meth:`follow`; call :meth:`stop` from another thread (or a signal handler).
    """

    def __init__(
        self,
        matches: Mapping[str, str],
        *,
        journalctl: str = "journalctl",
        since_cursor: str | None = None,
        extra_args: Sequence[str] = (),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 10.0,
        refresh_after: float | None = 10.0,
        traceback_quiet: float = 2.0,
    ) -> None:
        for name in matches:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"invalid journal field name {name!r}")
        self.matches = dict(matches)
        self.journalctl = journalctl
        self.cursor = since_cursor
        self.extra_args = list(extra_args)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        # A journalctl --follow silent this long is replaced by a fresh one resuming after the
        # cursor: twice in CI runs one stopped delivering (two entries, then none for 15 s)
        # while journald kept storing them. Idle, that is one journalctl start per interval.
        self.refresh_after = refresh_after
        self.refreshes = 0
        self.restarts = 0
        self._started_at = time.time()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        # Docker's journald driver splits a line longer than 16 kB into several entries, all
        # but the last flagged CONTAINER_PARTIAL_MESSAGE=true. Parsed one by one, the chunks of
        # a long JSON ERROR line (an exception with its SQL, say) are neither JSON nor a known
        # plain-text form, so they fell back to stdout's PRIORITY 6: INFO, and the error was
        # never alerted on. The chunks are held here per container and stream until the last.
        # A line's last chunk may never come (journald dropped it past its rate limit, or the
        # container was redeployed: a new id), and chunks held for ever kept ``holding_partial``
        # true for good, the monitor's saved cursor before them: they are handed over as they are
        # once their stream has said nothing for ``traceback_quiet`` seconds, like a traceback.
        self._partial: dict[tuple[str, str], _HeldChunks] = {}
        # A Python traceback written as plain text (a crash before JSON logging was configured,
        # uwsgi failing to load the app) is one entry per line under that driver too: each line
        # was an alert of its own (stderr: PRIORITY 3), and past 20 distinct lines the exception,
        # the last one, was not in the email. Its lines are held per stream, like the chunks
        # above, from the header to the first line that is not indented (the exception), or
        # until the stream has said nothing for ``traceback_quiet`` seconds.
        self.traceback_quiet = traceback_quiet
        self._tracebacks: dict[tuple[str, str], _HeldTraceback] = {}
        # A structured (JSON) line on a stream holding a traceback is not part of it (another
        # thread logged before the exception line): it ends the traceback, handed over as it
        # is, and waits here to be the next entry (it was swallowed into the traceback's text).
        self._ready: list[JournalEntry] = []
        # Streams whose last line was a Python warning: its indented source line comes next, and
        # is INFO (the warning names file and line), not an ERROR for being on stderr.
        self._after_warning: set[tuple[str, str]] = set()

    # -- process management ---------------------------------------------------------------
    def command(self) -> list[str]:
        """The journalctl argument list for the next start (resumes after the last cursor)."""
        exe = shutil.which(self.journalctl) or self.journalctl
        args = [exe, "--output=json", "--follow", "--all", "--no-pager"]
        if self.cursor:
            args.append(f"--after-cursor={self.cursor}")
        elif self.restarts or self.refreshes:
            # Restarted before any entry arrived: replay from when we began following.
            args.append(f"--since=@{int(self._started_at)}")
        else:
            args.append("--lines=0")
        args.extend(self.extra_args)
        args.extend(f"{k}={v}" for k, v in self.matches.items())
        return args

    def any_entry(self, timeout: float = 10.0) -> tuple[bool | None, str]:
        """Whether the journal holds any entry of the matches (a read of the newest one, not
        followed), and what journalctl said on stderr (a user who may not read the system
        journal is told so there); None when it could not tell.

        With no cursor to resume after yet, the follow then starts after that newest entry
        instead of at the end of the journal when it starts: a monitor's cursor file then always
        has a position to save. From the end, an alert the first entry read raised had none (the
        position before it had no cursor), and while it waited nothing was saved at all: a
        restart meanwhile began at the end again, that alert and every one after it lost. An entry
        written between this read and the follow's start (the SMTP log-in) is read too."""
        exe = shutil.which(self.journalctl) or self.journalctl
        args = [exe, "--output=json", "--lines=1", "--no-pager", *self.extra_args]
        args.extend(f"{k}={v}" for k, v in self.matches.items())
        try:
            done = subprocess.run(  # an argument list, no shell
                args, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("cannot ask journalctl for an entry", extra={"error": str(exc)})
            return None, ""
        said = done.stderr.decode("utf-8", "replace").strip()
        if done.returncode != 0:
            return None, said
        if self.cursor is None:
            with contextlib.suppress(ValueError, AttributeError):
                self.cursor = _field_text(json.loads(done.stdout).get("__CURSOR")) or None
        return bool(done.stdout.strip()), said

    @property
    def pid(self) -> int | None:
        """The current journalctl process id (tests kill it to check the restart)."""
        with self._proc_lock:
            return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> None:
        """Make :meth:`follow` return soon; safe to call from any thread."""
        self._stop.set()
        # Not under _proc_lock: monitor-docker.py calls this from its signal handler, which runs
        # in the main thread — the one in follow() — and a signal landing while follow() held
        # the (non-reentrant) lock waited for itself for ever. Reading one attribute needs no
        # lock; a process started after this read sees _stop set and is ended by follow().
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    @property
    def holding_partial(self) -> bool:
        """True while chunks of a long line wait for their last one, or an entry already read
        waits to be handed over (``cursor`` is past them)."""
        return bool(self._partial or self._tracebacks or self._ready)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _spawn(self, out: queue.Queue[tuple[str, Any]], *, refresh: bool = False) -> subprocess.Popen[bytes]:
        """Start journalctl. A refresh (every ``refresh_after`` s on a quiet stream) says so at DEBUG:
        as INFO it was 8,640 lines a day in the monitor's own log, burying what it has to say."""
        cmd = self.command()
        log.log(
            logging.DEBUG if refresh else logging.INFO,
            "starting journalctl",
            extra={"argv": cmd, "restarts": self.restarts, "refreshes": self.refreshes},
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None and proc.stderr is not None

        def read_stdout(stream: IO[bytes]) -> None:
            for line in stream:
                out.put(("line", line))
            out.put(("eof", proc))

        def read_stderr(stream: IO[bytes]) -> None:
            for line in stream:
                text = line.decode("utf-8", "replace").strip()
                if text:
                    log.warning("journalctl: %s", text)

        threading.Thread(target=read_stdout, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=read_stderr, args=(proc.stderr,), daemon=True).start()
        return proc

    # -- iteration ------------------------------------------------------------------------
    def follow(self, idle: float = 1.0) -> Iterator[JournalEntry | None]:
        """Yield entries as they arrive, and ``None`` after ``idle`` seconds without one.

        The ``None`` ticks let the caller do periodic work (flush alerts) without threads.
        Returns when :meth:`stop` is called.
        """
        backoff = self.backoff_initial
        lines: queue.Queue[tuple[str, Any]] = queue.Queue()
        if not (self.restarts or self.refreshes):
            self._started_at = time.time()  # not the creation: main() makes it before its SMTP log-in
        refreshed = False  # the journalctl to start replaces a silent one
        try:
            while not self._stop.is_set():
                try:
                    proc = self._spawn(lines, refresh=refreshed)
                except OSError as exc:
                    log.error("cannot start journalctl", extra={"error": str(exc), "argv0": self.journalctl})
                    proc = None
                with self._proc_lock:
                    self._proc = proc
                started = last_line = time.monotonic()
                refreshing = False
                while proc is not None and not self._stop.is_set():
                    try:
                        kind, payload = lines.get(timeout=idle)
                    except queue.Empty:
                        silent = time.monotonic() - last_line
                        if self.refresh_after and not refreshing and silent > self.refresh_after:
                            refreshing = True  # its lines still queued are read, then its EOF
                            proc.terminate()
                        yield from self._quiet_tracebacks()
                        yield None
                        continue
                    if kind == "eof":
                        if payload is proc:
                            break
                        continue  # EOF of an earlier process
                    last_line = time.monotonic()
                    entry = self._parse_line(payload)
                    if entry is not None:
                        backoff = self.backoff_initial
                        yield entry
                    while self._ready:
                        yield self._ready.pop(0)
                    yield from self._quiet_tracebacks()  # those of streams other lines outran
                if self._stop.is_set():
                    break
                code = proc.wait() if proc is not None else None
                refreshed = refreshing
                if refreshing:
                    self.refreshes += 1
                    log.debug("journalctl refreshed after silence", extra={"refreshes": self.refreshes})
                    continue
                if time.monotonic() - started > self.stable_after:
                    backoff = self.backoff_initial
                log.warning(
                    "journalctl exited; restarting",
                    extra={"returncode": code, "backoff_s": backoff, "cursor_known": bool(self.cursor)},
                )
                self.restarts += 1
                deadline = time.monotonic() + backoff
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if not self._stop.wait(min(idle, max(0.0, deadline - time.monotonic()))):
                        yield None
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            with self._proc_lock:
                proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _parse_line(self, line: bytes) -> JournalEntry | None:
        try:
            raw = json.loads(line)
        except ValueError:
            log.warning("unparseable journalctl output", extra={"bytes": len(line)})
            return None
        if not isinstance(raw, dict):
            return None
        cursor = _field_text(raw.get("__CURSOR"))
        if cursor:
            self.cursor = cursor
        key = self._stream(raw)
        joined = self._join_partial(raw)
        if joined is not None:
            joined = self._join_traceback(joined)
        if joined is None:
            self._after_warning.discard(key)
            return None
        entry = parse_entry(joined)
        plain_line = not entry.is_structured and "\n" not in entry.message
        if plain_line and key in self._after_warning and entry.message[:1].isspace():
            entry = dataclasses.replace(entry, level="INFO")
            self._after_warning.discard(key)  # one source line
        elif plain_line and _PYTHON_WARNING.match(entry.message):
            self._after_warning.add(key)
        else:
            self._after_warning.discard(key)
        return entry

    @staticmethod
    def _stream(raw: Mapping[str, Any]) -> tuple[str, str]:
        """The container and stream an entry came from (stdout is PRIORITY 6, stderr 3)."""
        return (
            _field_text(raw.get("CONTAINER_ID_FULL")) or _field_text(raw.get("CONTAINER_NAME")) or "",
            _field_text(raw.get("PRIORITY")) or "",
        )

    def _join_traceback(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """Hold a plain-text traceback's lines; return them as one entry with its last (see __init__)."""
        key = self._stream(raw)
        line = (_field_text(raw.get("MESSAGE")) or "").rstrip("\n")
        held = self._tracebacks.get(key)
        if held is None:
            if line.rstrip() != TRACEBACK_HEADER:
                return raw
            self._tracebacks[key] = _HeldTraceback(raw, [line], time.monotonic())
            return None
        if json_log_fields(line) is not None:  # not the traceback's: the end of what it wrote
            del self._tracebacks[key]
            self._ready.append(parse_entry(raw))
            return held.joined()
        held.lines.append(line)
        held.last = raw
        held.at = time.monotonic()
        if line[:1].isspace() and len(held.lines) < MAX_TRACEBACK_LINES:
            return None
        del self._tracebacks[key]  # the exception line (or one that is not indented): the end
        return held.joined()

    def _quiet_tracebacks(self) -> Iterator[JournalEntry]:
        """Hand over the tracebacks whose stream stopped before their exception line, and the
        chunks of a long line whose last chunk did not come."""
        now = time.monotonic()
        for key, chunks in list(self._partial.items()):
            if now - chunks.at >= self.traceback_quiet:
                del self._partial[key]
                yield parse_entry(chunks.joined())
        for key, held in list(self._tracebacks.items()):
            if now - held.at >= self.traceback_quiet:
                del self._tracebacks[key]
                yield parse_entry(held.joined())

    def _join_partial(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        """Hold Docker's partial chunks; return the whole line with the last one (see __init__)."""
        key = self._stream(raw)
        partial = _field_text(raw.get("CONTAINER_PARTIAL_MESSAGE")) == "true"
        if not partial and key not in self._partial:
            return raw
        chunks = self._partial.setdefault(key, _HeldChunks(raw, [], 0.0))
        chunks.parts.append(_field_bytes(raw.get("MESSAGE")))
        chunks.last, chunks.at = raw, time.monotonic()
        if partial and sum(map(len, chunks.parts)) < MAX_JOINED_BYTES:
            return None
        # The last chunk, or a runaway line handed over as it is rather than held for ever.
        del self._partial[key]
        return chunks.joined()
