"""The container log monitor behind ``monitor-docker.py``.

Follows a container's journald entries (``journalctl -o json -f CONTAINER_NAME=...``),
turns ERROR entries (and WARNING ones with ``--notify-warning``) into alerts and sends them
through :class:`app.monitoring.alerts.Alerter`, so a burst of identical errors becomes one
email with a count. Keeps the seed's interface::

    monitor-docker.py CONTAINER_NAME SMTP_SERVER EMAIL [--password P] [--print]
        [--smtp-port 25] [--is-secure] [--notify-warning]

but the password need never be on the command line: ``MONITOR_SMTP_PASSWORD``,
``--password-file`` / ``MONITOR_SMTP_PASSWORD_FILE``, or an interactive prompt. The SMTP
login, sender and recipients are checked once at start: a wrong password (or a sender the
server refuses) ends the process with a clear message and exit status 2 (configuration error;
supervisors should not restart on it) instead of a crash loop that fails at the first real alert.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import shutil
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from app import stop_signals
from app.durable import write_durably
from app.listener import MAX_PORT
from app.monitoring.alerts import (
    DEFAULT_PASSWORD_ENV,
    DEFAULT_PASSWORD_FILE_ENV,
    Alert,
    AlertDeliveryError,
    Alerter,
    PasswordSourceError,
    Severity,
    SmtpClientCertificateRequired,
    SmtpConnectionError,
    SmtpSink,
    load_smtp_password,
)
from app.monitoring.journal import TRACEBACK_HEADER, JournalEntry, JournalFollower
from app.monitoring.logs import LOG_LEVELS, configure_logging
from app.number_options import number_problem

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between two saves of the cursor file, at least (docs/operations.md)
PRINT_BACKLOG = 1 << 18  # characters of --print output waiting for a reader, at most (docs/operations.md)

EXIT_OK = 0
EXIT_CONFIG = 2
# sysexits' EX_TEMPFAIL: the SMTP server could not be reached at start. Not a configuration
# error: the documented unit restarts the monitor on it (it prevents restarts on 2 only), so
# a relay that comes up after the host stays monitored, and --cursor-file misses nothing.
EXIT_UNREACHABLE = 75

# Fields of our JSON log lines worth repeating in an alert email.
DETAIL_FIELDS = (
    "request_id",
    "endpoint",
    "method",
    "status",
    "latency_ms",
    "model_version",
    "user_id",
    "alert_count",
    "alert_entries",
    # why, and what about: a refused bundle's ERROR (its target or path and reason), a failed
    # write's; the email said only the message, and the reason was in the journal alone
    "target",
    "path",
    "reason",
    "exc",
)


class ConfigError(Exception):
    """Bad settings; reported as one line and exit status 2."""


class Unreachable(Exception):
    """The SMTP server did not answer at start, or answered "try again later" (4xx); reported as one
    line and exit status 75."""


# A journald cursor as journald writes it (sd_journal_get_cursor): "s=<seqnum id>;i=<seqnum>;b=<boot
# id>;m=<monotonic>;t=<realtime>;x=<xor hash>", ids of 32 hex digits, numbers of up to 16. Any run of
# "k=<hex>" pairs passed, and journalctl refuses most ("s=4f0d;i=2a", a file cut short or edited by
# hand: "Failed to seek to cursor"), at each start: restarted with it for ever, reading nothing.
_CURSOR = re.compile(
    r"^s=[0-9a-f]{32};i=[0-9a-f]{1,16};b=[0-9a-f]{32};m=[0-9a-f]{1,16};t=[0-9a-f]{1,16};x=[0-9a-f]{1,16}$"
)


class CursorFile:
    """Where the monitor resumes after a restart (``--cursor-file``).

    Without it a restarted monitor starts after the newest entry it finds at start: every entry
    written while it was down (a crash and systemd's RestartSec, an upgrade, a host reboot) was
    never looked at. While alerts wait to be delivered the saved cursor is the position just
    before the oldest of their entries (:meth:`Monitor.save_cursor`), so an alert is never lost
    to a restart; at worst one already sent is sent again, in one digest.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.saved: str | None = None
        self.failing = False  # the last save failed: said once, not at every save (once a second)

    def load(self) -> str | None:
        """The saved cursor (None: none yet, or a malformed file). A file that could never be
        saved is a :class:`ConfigError`: in a directory that does not exist, or that this user may
        not write in, every save failed, said once, and a restart began at the end of the journal."""
        directory = self.path.parent
        problem = None
        if not directory.is_dir():
            problem = "does not exist"
        elif not os.access(directory, os.W_OK | os.X_OK):
            problem = "is not writable"
        if problem is not None:
            raise ConfigError(f"cannot save the cursor file {self.path}: directory {directory} {problem}")
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read cursor file {self.path}: {exc}") from None
        if not _CURSOR.match(text):
            # journalctl refuses a malformed cursor, and would be restarted with it for ever
            log.warning("ignoring a malformed cursor file", extra={"path": str(self.path)})
            return None
        self.saved = text
        return text

    def save(self, cursor: str | None) -> None:
        """Replace the file atomically and durably (a crash must not leave half a cursor, or an
        empty file whose data was never synced). A save that fails (a full disk, a read-only
        file system) is said once, and so is the first that works again: each save, once a
        second, used to log the same warning for as long as the cause lasted."""
        if cursor is None or cursor == self.saved:
            return
        try:
            write_durably(self.path, (cursor + "\n").encode())
        except OSError as exc:
            if not self.failing:
                self.failing = True
                log.warning(
                    "cannot save the journal cursor",
                    extra={"path": str(self.path), "error": str(exc), "said": "once, until a save works"},
                )
            return
        if self.failing:
            self.failing = False
            log.info("the journal cursor is saved again", extra={"path": str(self.path)})
        self.saved = cursor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor-docker.py",
        description="Follow a container's journald logs and email on ERROR (and optionally WARNING) "
        "entries, grouped and rate-limited.",
        epilog="The SMTP password is taken from --password, --password-file, $MONITOR_SMTP_PASSWORD, "
        "the file named by $MONITOR_SMTP_PASSWORD_FILE, or a prompt, in that order. Exit status 2 "
        "means a configuration problem (bad password, TLS): fix it, do not restart blindly; 75, an SMTP "
        "server that did not answer, or answered 'try again later' (4xx): try again later.",
    )
    parser.add_argument("container_name", metavar="CONTAINER_NAME", help="the Docker container to watch")
    parser.add_argument("smtp_server", metavar="SMTP_SERVER", help="SMTP server host name or address")
    parser.add_argument("email", metavar="EMAIL", help="address to send from and to (and the SMTP login)")
    parser.add_argument(
        "--password",
        help="SMTP password (visible to other users in `ps`: prefer $MONITOR_SMTP_PASSWORD or "
        "--password-file; prompted for when no source is given)",
    )
    parser.add_argument("--password-file", metavar="PATH", help="read the SMTP password from this file")
    parser.add_argument("--smtp-user", metavar="USER", help="SMTP login name (default: EMAIL)")
    parser.add_argument("--no-auth", action="store_true", help="do not log in (a relay that needs no login)")
    parser.add_argument("--print", dest="print_entries", action="store_true", help="echo entries to stdout")
    parser.add_argument("--smtp-port", type=int, default=25, help="SMTP port (default 25)")
    parser.add_argument(
        "--is-secure",
        action="store_true",
        help="encrypt the SMTP connection: STARTTLS, or implicit TLS when the port is 465",
    )
    parser.add_argument("--ssl", action="store_true", help="force implicit TLS (SMTPS) whatever the port")
    parser.add_argument("--smtp-cafile", metavar="PATH", help="CA bundle to verify the SMTP server with")
    parser.add_argument("--notify-warning", action="store_true", help="also email WARNING entries")
    parser.add_argument("--to", action="append", metavar="ADDR", help="recipient (repeatable; default EMAIL)")
    parser.add_argument(
        "--group-wait", type=float, default=10.0, help="seconds to collect a burst before emailing (10)"
    )
    parser.add_argument(
        "--window", type=float, default=300.0, help="minimum seconds between two emails of one kind (300)"
    )
    parser.add_argument("--smtp-timeout", type=float, default=10.0, help="SMTP socket timeout, seconds (10)")
    parser.add_argument("--journalctl", default="journalctl", help="journalctl executable (default: on PATH)")
    parser.add_argument(
        "--cursor-file",
        metavar="PATH",
        help="remember the journal position here and resume after it on restart "
        "(default: start after the newest entry)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,  # a typo is a usage error, not logging's ValueError traceback
        default="INFO",
        help="the monitor's own log level (stderr, JSON)",
    )
    return parser


def resolve_password(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: IO[str] | None = None,
) -> str | None:
    """Return the SMTP password from the first configured source, prompting only on a terminal."""
    if args.no_auth:
        return None
    if args.password is not None:
        log.warning("SMTP password given on the command line; other local users can read it with ps")
    try:
        password = load_smtp_password(
            password=args.password, password_file=args.password_file, environ=environ
        )
    except PasswordSourceError as exc:
        raise ConfigError(str(exc)) from None
    if password is not None:
        return password
    stream = stdin if stdin is not None else sys.stdin
    if stream is None or not stream.isatty():
        env = os.environ if environ is None else environ
        empty = [name for name in (DEFAULT_PASSWORD_ENV, DEFAULT_PASSWORD_FILE_ENV) if env.get(name) == ""]
        raise ConfigError(
            f"no SMTP password{''.join(f' ({name} is set but empty)' for name in empty)}: set "
            "MONITOR_SMTP_PASSWORD, pass --password-file PATH, run in a terminal to be prompted, or use "
            "--no-auth for a relay that needs no login"
        )
    user = args.smtp_user or args.email
    return getpass.getpass(f"SMTP password for {user} at {args.smtp_server}: ")


def build_sink(args: argparse.Namespace, password: str | None) -> SmtpSink:
    if args.ssl or (args.is_secure and args.smtp_port == 465):
        security = "ssl"
    elif args.is_secure:
        security = "starttls"
    else:
        security = "none"
    context = None
    if args.smtp_cafile:
        try:
            context = ssl.create_default_context(cafile=args.smtp_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {args.smtp_cafile}: {exc}") from None
    return SmtpSink(
        args.smtp_server,
        args.smtp_port,
        sender=args.email,
        recipients=args.to or [args.email],
        username=None if args.no_auth else (args.smtp_user or args.email),
        password=password,
        security=security,
        timeout=args.smtp_timeout,
        ssl_context=context,
    )


def verify_sink(sink: SmtpSink, *, attempts: int = 3, delay: float = 2.0) -> None:
    """Log in (and name sender and recipients) once at start. Auth/TLS problems and refused
    addresses fail at once; an unreachable server gets retries. A server that ended each try
    after asking for a TLS client certificate requires one, which the monitor cannot send: a
    :class:`ConfigError`, not :class:`Unreachable` (exit 75, restarted every 10 s for ever); once
    may be a server that asks for one and went away for another reason."""
    certificate_required = 0
    for attempt in range(1, attempts + 1):
        try:
            sink.verify()
            return
        except SmtpConnectionError as exc:
            certificate_required += isinstance(exc, SmtpClientCertificateRequired)
            if attempt == attempts:
                if certificate_required == attempts:
                    raise ConfigError(f"{exc} (at each of {attempts} attempts)") from None
                raise Unreachable(f"{exc} (after {attempts} attempts)") from None
            log.warning("SMTP server not reachable; retrying", extra={"error": str(exc), "attempt": attempt})
            time.sleep(delay * attempt)
        except AlertDeliveryError as exc:
            raise ConfigError(str(exc)) from None


def entry_to_alert(entry: JournalEntry, container: str) -> Alert:
    """Turn a journal entry into an alert; alerts the service logged keep their own kind."""
    fields = entry.fields or {}
    forwarded_kind = fields.get("alert_kind")
    kind = f"log.{entry.level.lower()}"
    summary = f"{entry.logger}: {entry.message}" if entry.logger else entry.message
    if isinstance(forwarded_kind, str) and forwarded_kind:
        kind, summary = forwarded_kind, entry.message
    details: dict[str, Any] = {"container": entry.container_name or container}
    if not entry.is_structured and "\n" in entry.message and entry.message.startswith(TRACEBACK_HEADER):
        # a plain-text traceback (JournalFollower joins its lines): its exception is the news
        lines = [line for line in entry.message.splitlines() if line.strip()]
        summary = lines[-1].strip()
        details["traceback"] = entry.message
    if entry.priority is not None:
        details["priority"] = entry.priority
    if not entry.is_structured and entry.identifier:
        details["identifier"] = entry.identifier
    for name in DETAIL_FIELDS:
        if name in fields:
            details[name] = fields[name]
    return Alert(
        kind=kind,
        severity=Severity.parse(entry.level) if entry.level != "DEBUG" else Severity.INFO,
        summary=summary or "(empty message)",
        details=details,
        at=entry.timestamp,
    )


def check_journal(follower: JournalFollower, container: str) -> bool:
    """Read the journal once before following it. A journalctl that fails (a user outside the
    systemd-journal and adm groups: "No journal files were opened due to insufficient
    permissions.") is a :class:`ConfigError` with its words: the follower restarted it with
    backoff for ever, the monitor alive to systemd, reading nothing, alerting on nothing.

    When the journal has no entry at all for ``container``, one WARNING (the monitor's own log,
    no alert), and True. The monitor follows the name anyway: the container may start later. A
    mistyped or renamed container (or one not logging to journald) was watched for ever,
    silently, with nothing ever to alert on.
    """
    found, said = follower.any_entry()
    if found is None and said:  # journalctl ran, and refused (not a timeout: that cannot tell)
        raise ConfigError(
            f"journalctl cannot read the journal ({follower.journalctl}): {' '.join(said.split())} "
            "(run the monitor as root, or as a user in the systemd-journal or adm group)"
        )
    if found is not False:
        return False
    log.warning(
        "no journal entries for CONTAINER_NAME=%s: nothing will be alerted on if the name is mistyped "
        "or the container was renamed. `docker ps --format '{{.Names}}'` lists the running containers' "
        "names, `journalctl -F CONTAINER_NAME` those in the journal; the container must log with "
        "--log-driver=journald. Following %s anyway, in case it starts later",
        container,
        container,
        extra={"container": container, **({"journalctl": said} if said else {})},
    )
    return True


class Printer:
    """``--print``'s output, written by a thread of its own.

    The echo was written in the monitor's loop: to a reader that stalls (a pager paused or
    scrolled back, a terminal on hold), once a pipe's 64 KiB were full the write waited, and the
    loop with it: no entry read, no alert sent, no SIGTERM heeded for as long as it stalled. Now
    only this thread waits. Up to ``backlog`` characters wait with it; past that, lines are left
    out, and the next line it takes is preceded by one saying how many were. The thread writes to
    the output's file descriptor, not through its buffer: blocked in the buffer at exit, it held
    the buffer's lock, which the interpreter's last flush of stdout waits for (a fatal error).
    """

    def __init__(self, out: IO[str], *, backlog: int = PRINT_BACKLOG) -> None:
        self.out = out
        self.encoding = getattr(out, "encoding", None) or "utf-8"
        self.backlog = backlog
        try:
            out.flush()
            self._fd: int | None = out.fileno()
        except (OSError, ValueError):  # no file descriptor (io.StringIO): written as a stream
            self._fd = None
        self._lines: deque[str] = deque()
        self._waiting = 0  # characters queued or being written
        self._skipped = 0  # lines left out since the last one queued
        self.left_out = 0  # in all
        self.gone: OSError | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="print", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        """Queue ``line`` and a line feed, or leave it out when the backlog is full; never waits."""
        text = line + "\n"
        with self._cond:
            if self.gone is not None or self._closing:
                return
            if self._lines and self._waiting + len(text) > self.backlog:
                self._skipped += 1
                self.left_out += 1
                return
            self._queue_notice()
            self._lines.append(text)
            self._waiting += len(text)
            self._cond.notify_all()

    def _queue_notice(self) -> None:
        if self._skipped:
            notice = f"--print: {self._skipped} entries not printed here: the output was not being read\n"
            self._skipped = 0
            self._lines.append(notice)
            self._waiting += len(notice)

    def close(self, timeout: float = 2.0) -> None:
        """Take no more lines, and wait up to ``timeout`` s for those queued to be written: an
        output still not reading keeps them, and the thread, blocked until the process exits."""
        with self._cond:
            if self.gone is None:
                self._queue_notice()
            self._closing = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._waiting == 0, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._lines or self._closing)
                if not self._lines:
                    return
                text = self._lines.popleft()
            try:
                self._emit(text)
            except OSError as exc:
                # said before the lines are dropped: close() returns once they are, said
                log.warning(
                    "--print stopped: its output is gone; still monitoring", extra={"error": str(exc)}
                )
                with self._cond:
                    self.gone = exc
                    self._lines.clear()
                    self._waiting = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._waiting -= len(text)
                self._cond.notify_all()

    def _emit(self, text: str) -> None:
        if self._fd is None:
            self.out.write(text)
            self.out.flush()
            return
        # what the output's encoding cannot hold is "?" (a JSON "\udcff" raised out of --print
        # and ended the monitor, on the same entry at each restart)
        data = memoryview(text.encode(self.encoding, "replace"))
        while data:
            data = data[os.write(self._fd, data) :]


class Monitor:
    """Follow entries and feed the alerter; stoppable from another thread or a signal."""

    def __init__(
        self,
        container: str,
        follower: JournalFollower,
        alerter: Alerter,
        *,
        notify_warning: bool = False,
        print_entries: bool = False,
        out: IO[str] | None = None,
        idle: float = 0.5,
        cursor_file: CursorFile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.container = container
        self.clock = clock
        self.follower = follower
        self.alerter = alerter
        self.threshold = "WARNING" if notify_warning else "ERROR"
        self.print_entries = print_entries
        self.out = out
        self.idle = idle
        self.cursor_file = cursor_file
        self.printer: Printer | None = None  # --print's, made at the first entry printed
        self.entries_seen = 0
        self.alerts_raised = 0
        # Where a restart must resume so that no alert still undelivered is lost: for each alert
        # raised (its number), the journal position just before its entry, oldest first.
        self._undelivered: deque[tuple[int, str | None]] = deque()
        self._before = follower.cursor  # the position before the entry being handled

    def handle(self, entry: JournalEntry) -> None:
        self.entries_seen += 1
        if entry.at_least(self.threshold):
            self.alerts_raised += 1
            seq = self.alerter.raise_alert(entry_to_alert(entry, self.container))
            if self.cursor_file is not None:  # else nothing ever takes it off (save_cursor returns)
                self._undelivered.append((seq, self._before))
        if self.print_entries:
            self.echo(entry)

    def echo(self, entry: JournalEntry) -> None:
        """``--print``, after the entry's alert is raised, through a :class:`Printer`: it never
        waits for the output. One that is gone (EPIPE: the reader of a pipe, an SSH session
        without a terminal; EIO: a closed terminal) raised before the alert, which was lost, and
        the monitor ended; now the echo stops, said once, and the monitoring goes on."""
        if self.printer is None:
            self.printer = Printer(self.out or sys.stdout)
        if self.printer.gone is not None:
            self.print_entries = False
            return
        self.printer.write(entry.format_line())

    def run(self) -> None:
        """Process entries until :meth:`stop`; then send whatever alerts are still pending."""
        saved_at = self.clock()
        try:
            for entry in self.follower.follow(idle=self.idle):
                if entry is not None:
                    self.handle(entry)
                if not self.follower.holding_partial:  # else the next entry began before the cursor
                    self._before = self.follower.cursor
                self.alerter.flush_due()
                if self.alerter.login_refused is not None and not self.follower.stopped:
                    # every alert from now on would be held too: stop, the alerts undelivered
                    # (the cursor stays before them), and let main() say so with exit 2
                    self.stop()
                # At most once a second (a write and two fsyncs, not one per entry); the idle
                # ticks (every ``idle`` s without an entry) save a quiet stream's last position.
                # They used to save at every tick too: two saves could come ``idle`` s apart.
                if self.clock() - saved_at >= SAVE_INTERVAL:
                    saved_at = self.clock()
                    self.save_cursor()
        finally:
            self.alerter.close()
            self.save_cursor()
            if self.printer is not None:
                self.printer.close()

    def save_cursor(self) -> None:
        """Record the journal position a restart resumes after: the current one, or, while
        alerts are undelivered, the one just before the oldest of their entries.

        Under a steady stream of errors some alert is always waiting (one notification per kind
        and window), and the cursor used to be saved only with none waiting: never, so a restart
        went back to wherever it had last been saved and alerted everything since again.
        """
        if self.cursor_file is None:
            return
        # Only a waiting group's first alert can be the oldest undelivered one: the positions of
        # the others are dropped, else an error storm while the SMTP server is down grew this
        # list by one per error line for as long as the outage lasted (hundreds of MB).
        undelivered = self.alerter.undelivered()
        self._undelivered = deque(item for item in self._undelivered if item[0] in undelivered)
        if self._undelivered:
            position = self._undelivered[0][1]
        elif self.follower.holding_partial:
            position = self._before
        else:
            position = self.follower.cursor
        self.cursor_file.save(position)

    def stop(self) -> None:
        self.follower.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``monitor-docker.py``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, stream="stderr")
    try:
        # checked here, not left to the socket layer: a timeout of 0 was a ValueError traceback,
        # and a port above 65535 "unreachable" (exit 75), which a unit restarts for ever
        for option, seconds, strict in (
            ("--group-wait", args.group_wait, False),
            ("--window", args.window, False),
            ("--smtp-timeout", args.smtp_timeout, True),
        ):
            problem = number_problem(seconds, 0, strict=strict, unit="seconds")
            if problem is not None:
                raise ConfigError(f"{option} {problem}")
        if not 0 < args.smtp_port <= MAX_PORT:
            raise ConfigError(f"--smtp-port must be between 1 and {MAX_PORT}")
        if shutil.which(args.journalctl) is None:
            # else the follower retries starting it for ever: alive to systemd, watching nothing
            raise ConfigError(
                f"journalctl not found ({args.journalctl}): install systemd's journalctl on this host, "
                "or give its path with --journalctl"
            )
        cursor_file = CursorFile(args.cursor_file) if args.cursor_file else None
        since_cursor = cursor_file.load() if cursor_file is not None else None
        follower = JournalFollower(
            {"CONTAINER_NAME": args.container_name}, journalctl=args.journalctl, since_cursor=since_cursor
        )
        check_journal(follower, args.container_name)  # before "monitoring container": done by then
        password = resolve_password(args)
        sink = build_sink(args, password)
        verify_sink(sink)
    except ConfigError as exc:
        print(f"monitor-docker: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Unreachable as exc:
        print(f"monitor-docker: error: {exc}; try again later", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (KeyboardInterrupt, EOFError):
        print("monitor-docker: interrupted", file=sys.stderr)
        return EXIT_CONFIG

    alerter = Alerter(
        [sink], group_wait=args.group_wait, window=args.window, source=f"movierec {args.container_name}"
    )
    monitor = Monitor(
        args.container_name,
        follower,
        alerter,
        notify_warning=args.notify_warning,
        print_entries=args.print_entries,
        cursor_file=cursor_file,
    )
    # SIGHUP too (its terminal or SSH session closed): it killed the monitor at once, the alerts
    # waiting for their group or window unsent. The handlers found are set back once it stopped.
    with stop_signals.handled(lambda *_: monitor.stop()):
        log.info(
            "monitoring container",
            extra={
                "container": args.container_name,
                "threshold": monitor.threshold,
                "smtp_server": sink.where,
                "smtp_security": sink.security,
                "recipients": sink.recipients,
            },
        )
        monitor.run()
    not_printed = monitor.printer.left_out if monitor.printer is not None else 0
    log.info(
        "monitor stopped",
        extra={
            "entries": monitor.entries_seen,
            "alerts": monitor.alerts_raised,
            "emails": alerter.sent,
            **({"not_printed": not_printed} if not_printed else {}),
        },
    )
    if alerter.login_refused is not None:
        resent = "the alerts not sent are sent then" if cursor_file else "without --cursor-file they are lost"
        print(
            f"monitor-docker: error: {alerter.login_refused} (while running: fix the password and start "
            f"it again; {resent})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
