"""One path for every alert: grouping, deduplication, rate limiting, delivery.

Everything that wants a human's attention (a circuit breaker opening, drift above its
threshold, error lines in the service's log) calls :meth:`Alerter.raise_alert`. The
alerter groups alerts per *kind*, the way Alertmanager does:

* the first alert of a kind opens a group and waits ``group_wait`` seconds for companions,
  so a burst of 500 identical errors becomes **one** notification saying "500 x ...";
* after a notification, further alerts of that kind are collected and sent at most once
  per ``window`` seconds, as one digest;
* inside a group, identical alerts (same fingerprint: the summary with numbers and ids
  masked) are counted, not repeated; the digest lists at most ``max_entries`` distinct ones,
  and counts the others: exactly up to ``MAX_OMITTED_DISTINCT`` of them, estimated past that
  (a group's memory stays bounded in a storm of distinct messages).

Sinks deliver notifications: :class:`SmtpSink` (plain, STARTTLS or implicit TLS; the
password is held in memory only and never logged) and :class:`LoggingSink` (a structured
log line carrying ``alert_kind``; the journald monitor turns such lines back into alerts,
so the web service itself needs no SMTP credentials). A failing sink is logged and retried
(a few times, or until it is reachable again when the server cannot be reached); it never
takes the caller down.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import email.utils
import enum
import ipaddress
import logging
import math
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

from app.monitoring.logs import redact, scrub_text
from app.secret_files import SecretFileError, read_secret_file

log = logging.getLogger(__name__)

DEFAULT_PASSWORD_ENV = "MONITOR_SMTP_PASSWORD"  # noqa: S105  # nosec B105 - a variable name, not a secret
DEFAULT_PASSWORD_FILE_ENV = "MONITOR_SMTP_PASSWORD_FILE"  # noqa: S105  # nosec B105 - a variable name


class Severity(enum.IntEnum):
    """Alert severities, ordered so a group reports its worst member."""

    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50

    @classmethod
    def parse(cls, value: str | int | Severity) -> Severity:
        """Accept 'error', 'ERROR', 'warn', 40 or a Severity."""
        if isinstance(value, Severity):
            return value
        if isinstance(value, int):
            return cls(value)
        name = value.strip().upper()
        aliases = {"WARN": "WARNING", "FATAL": "CRITICAL", "CRIT": "CRITICAL", "ERR": "ERROR"}
        try:
            return cls[aliases.get(name, name)]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}") from None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Alert:
    """Something a human should know about.

    ``kind`` groups alerts for rate limiting ("breaker.opened", "drift", "log.error");
    ``summary`` is one line; ``details`` are key/value facts (redacted before delivery);
    ``fingerprint`` decides which alerts count as identical (default: the summary with
    digits, hex ids and UUIDs masked).
    """

    kind: str
    severity: Severity | str
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    at: dt.datetime = field(default_factory=_utcnow)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("alert kind must not be empty")
        object.__setattr__(self, "severity", Severity.parse(self.severity))

    @property
    def key(self) -> str:
        """The dedup key inside the kind."""
        return self.fingerprint if self.fingerprint is not None else fingerprint_of(self.summary)


_VARIABLE_PARTS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # UUIDs
    r"|\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b"  # hex ids
    r"|\d+(?:\.\d+)?",  # numbers
    re.IGNORECASE,
)


def fingerprint_of(summary: str) -> str:
    """Mask the parts of a message that vary between otherwise identical events."""
    return _VARIABLE_PARTS.sub("#", summary.strip())[:500]


@dataclass
class EntrySummary:
    """One distinct alert inside a notification, with how often it happened."""

    summary: str
    details: Mapping[str, Any]
    count: int
    first_at: dt.datetime
    last_at: dt.datetime


@dataclass(frozen=True)
class Notification:
    """What a sink delivers: one group of alerts of one kind."""

    kind: str
    severity: Severity
    count: int
    first_at: dt.datetime
    last_at: dt.datetime
    entries: tuple[EntrySummary, ...]
    omitted_distinct: int = 0
    omitted_count: int = 0
    source: str = "movierec"
    # past MAX_OMITTED_DISTINCT omitted ones: about how many more distinct, and their occurrences
    beyond_cap_distinct: int = 0
    beyond_cap_count: int = 0

    @property
    def subject(self) -> str:
        first = self.entries[0].summary if self.entries else self.kind
        first = " ".join(first.split())
        if len(first) > 90:
            first = first[:87] + "..."
        times = f"{self.count} x " if self.count > 1 else ""
        return f"[{self.source}] {self.severity.name}: {times}{self.kind}: {first}"

    @property
    def body(self) -> str:
        def ts(value: dt.datetime) -> str:
            return value.astimezone(dt.UTC).isoformat(timespec="seconds")

        lines = [
            f"Alert kind:  {self.kind}",
            f"Severity:    {self.severity.name}",
            f"Source:      {self.source}",
            f"Occurrences: {self.count} between {ts(self.first_at)} and {ts(self.last_at)}",
            f"Distinct:    {self._distinct}",
            "",
        ]
        for entry in self.entries:
            lines.append(f"[{entry.count} x] {entry.summary}")
            if entry.count > 1:
                lines.append(f"    first {ts(entry.first_at)}, last {ts(entry.last_at)}")
            else:
                lines.append(f"    at {ts(entry.first_at)}")
            for key, value in entry.details.items():
                text = str(value)
                if "\n" in text:
                    lines.append(f"    {key}:")
                    lines.extend(f"        {part}" for part in _clip_lines(text.splitlines()))
                else:
                    lines.append(f"    {key}: {_clip(text)}")
            lines.append("")
        if self.omitted_distinct:
            lines.append(
                f"... and {self.omitted_distinct} more distinct entries "
                f"({self.omitted_count - self.beyond_cap_count} occurrences) not listed; see the journal."
            )
            lines.append("")
        if self.beyond_cap_count:
            lines.append(
                f"... and about {self.beyond_cap_distinct:,} more distinct entries past those "
                f"({self.beyond_cap_count:,} occurrences): past {self.omitted_distinct:,} entries not "
                "listed the monitor keeps no list of them, only an estimate of how many differ; "
                "see the journal."
            )
            lines.append("")
        lines.append("What each alert means and what to do: docs/operations.md (section 'Alert catalogue').")
        return "\n".join(lines) + "\n"

    @property
    def _distinct(self) -> str:
        told_apart = len(self.entries) + self.omitted_distinct
        if not self.beyond_cap_count:
            return str(told_apart)
        return f"about {told_apart + self.beyond_cap_distinct:,}"


DETAIL_HEAD_LINES = 10  # a multi-line detail (a traceback) keeps its first lines ...
DETAIL_TAIL_LINES = 30  # ... and its last ones: a traceback's exception is its last line
DETAIL_LINE_CHARS = 1000


def _clip(line: str) -> str:
    return line if len(line) <= DETAIL_LINE_CHARS else line[: DETAIL_LINE_CHARS - 3] + "..."


def _clip_lines(lines: list[str]) -> list[str]:
    """A multi-line detail, bounded: its head and its tail, and how many lines between were cut."""
    if len(lines) > DETAIL_HEAD_LINES + DETAIL_TAIL_LINES + 1:
        cut = len(lines) - DETAIL_HEAD_LINES - DETAIL_TAIL_LINES
        lines = [*lines[:DETAIL_HEAD_LINES], f"... {cut} lines not shown ...", *lines[-DETAIL_TAIL_LINES:]]
    return [_clip(line) for line in lines]


class AlertSink(Protocol):
    """Delivers notifications. Raise :class:`AlertDeliveryError` (or anything) on failure."""

    name: str

    def send(self, notification: Notification) -> None: ...


class AlertDeliveryError(RuntimeError):
    """A notification could not be delivered. ``retryable`` says whether trying later may help;
    ``retry_with``, when set, is the sink a retry uses instead (one that delivers only to those
    the notification did not reach yet)."""

    def __init__(self, message: str, *, retryable: bool = True, retry_with: AlertSink | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_with = retry_with


class SmtpAuthError(AlertDeliveryError):
    """The SMTP server refused our credentials. Names server and user, never the password."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class SmtpConnectionError(AlertDeliveryError):
    """The SMTP server could not be reached, dropped the connection, or answered with a
    temporary (4xx) refusal: "try again later" (RFC 5321), a greylisting or rate-limiting relay.
    Retried until the server accepts (:meth:`Alerter._deliver`); at start, exit 75, not 2."""


class SmtpClientCertificateRequired(SmtpConnectionError):
    """The server asked for a TLS client certificate (its handshake's CertificateRequest), and
    ended the connection before answering over TLS when the monitor sent none, which it cannot
    send: it requires one. Retried as a dropped connection while running (a server that asks for
    one and went away for another reason looks the same once); at start, every try ended so is
    a configuration error (exit 2), not 75."""


class _CertificateRequested:
    """Whether a TLS handshake's server asked for a client certificate, read from the handshake
    messages (``SSLContext._msg_callback``, the ssl module's hook for them; where a Python lacks
    it, nothing is seen and such a server is a dropped connection, as before)."""

    HANDSHAKE = 22  # TLS content type
    CERTIFICATE_REQUEST = 13  # TLS handshake message type

    def __init__(self, context: ssl.SSLContext) -> None:
        self.seen = False
        self.answered = False  # the server answered over TLS: it took the connection as it was
        if hasattr(context, "_msg_callback"):
            # On the context: one connection of a sink at a time (the Alerter sends under a lock)
            context._msg_callback = self._message

    def _message(
        self, _conn: object, direction: str, _version: object, content_type: int, msg_type: int, _data: bytes
    ) -> None:
        if direction == "read" and content_type == self.HANDSHAKE and msg_type == self.CERTIFICATE_REQUEST:
            self.seen = True

    @property
    def refused(self) -> bool:
        """The server asked for a certificate and the connection ended before it answered."""
        return self.seen and not self.answered


def _is_temporary(code: int) -> bool:
    return 400 <= code < 500


class PasswordSourceError(RuntimeError):
    """A configured password source (file, environment) is unusable."""


MAX_OMITTED_DISTINCT = 1000
"""Distinct entries past the listed ones a group tells apart exactly (their fingerprints, up to
500 characters each, are kept until the group is sent). Past it they are counted in a
:class:`_DistinctEstimate`: kept all, an error storm of distinct lines held tens of MB a window
(journald lets 10,000 lines through in 30 s), per kind."""


class _DistinctEstimate:
    """How many distinct keys were added, estimated in fixed memory (linear counting: a bitmap of
    ``BITS`` bits, one set per key's hash; the share of bits still clear tells how many keys
    went in). Within about 1% up to a few hundred thousand keys; past about 1.5 million, when
    every bit is set, it says the most it can tell (a lower bound)."""

    BITS = 1 << 17  # 16 KiB

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)
        self._clear = self.BITS

    def add(self, key: str) -> None:
        bit = hash(key) % self.BITS  # the process's string hash: stable for the group's life
        byte, mask = divmod(bit, 8)
        if not self._bits[byte] & (1 << mask):
            self._bits[byte] |= 1 << mask
            self._clear -= 1

    def estimate(self) -> int:
        return round(self.BITS * math.log(self.BITS / max(self._clear, 1)))


@dataclass
class _Group:
    entries: dict[str, EntrySummary] = field(default_factory=dict)
    first_seq: int = 0  # the oldest alert in the group (Alerter.raise_alert's number)
    count: int = 0
    omitted_keys: set[str] = field(default_factory=set)  # at most MAX_OMITTED_DISTINCT
    omitted_count: int = 0
    beyond_cap: _DistinctEstimate | None = None  # the omitted keys past MAX_OMITTED_DISTINCT
    beyond_cap_count: int = 0
    severity: Severity = Severity.INFO
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None


@dataclass
class _KindState:
    group: _Group | None = None
    deadline: float | None = None
    last_sent: float | None = None


@dataclass
class _Retry:
    sink: AlertSink
    notification: Notification
    attempts: int
    next_at: float
    first_seq: int


class Alerter:
    """Groups, deduplicates and rate-limits alerts per kind, then hands them to sinks.

    ``group_wait``: seconds the first alert of a kind waits for companions before sending.
    ``window``: minimum seconds between two notifications of the same kind.
    ``max_entries``: distinct entries listed per notification (the rest are counted).
    ``max_attempts``: deliveries tried per notification; an unreachable SMTP server
    (:class:`SmtpConnectionError`) is retried without this limit, every ``retry_delay`` x
    attempt seconds up to ``max_retry_delay``, with at most ``max_queued`` notifications held.
    Call :meth:`flush_due` regularly (or :meth:`start` a background ticker) and
    :meth:`close` at shutdown, which sends whatever is still pending.
    """

    def __init__(
        self,
        sinks: Sequence[AlertSink],
        *,
        group_wait: float = 10.0,
        window: float = 300.0,
        max_entries: int = 20,
        source: str = "movierec",
        max_attempts: int = 3,
        retry_delay: float = 30.0,
        max_retry_delay: float = 300.0,
        max_queued: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if group_wait < 0 or window < 0 or max_entries < 1 or max_attempts < 1 or max_queued < 1:
            raise ValueError("group_wait/window must be >= 0, max_entries/max_attempts/max_queued >= 1")
        self.sinks = list(sinks)
        self.group_wait = group_wait
        self.window = window
        self.max_entries = max_entries
        self.source = source
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_queued = max_queued
        self._clock = clock
        self._states: dict[str, _KindState] = {}
        self._retries: list[_Retry] = []
        self._sending: list[int] = []  # first_seq of the notifications being delivered now
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        self.received = 0
        # The SMTP server refused the login while delivering (a password changed since the start):
        # why, and from then on the notifications are held, undelivered and not tried again by
        # themselves (a server locks an account after a few refused logins). The caller stops.
        self.login_refused: str | None = None
        self._refused: list[AlertSink] = []  # the sinks whose login was refused: never tried again

    # -- intake ---------------------------------------------------------------------------
    def raise_alert(self, alert: Alert) -> int:
        """Record an alert; it is delivered with its group when the group's time comes.

        Returns its number (1, 2, …): :meth:`oldest_undelivered` tells when it is handled.
        """
        summary = scrub_text(alert.summary.strip() or alert.kind)[:2000]
        details = redact(dict(alert.details))
        severity = Severity.parse(alert.severity)
        now = self._clock()
        with self._lock:
            self.received += 1
            seq = self.received
            state = self._states.setdefault(alert.kind, _KindState())
            if state.group is None:
                state.group = _Group(first_seq=seq)
                if state.last_sent is None or now - state.last_sent >= self.window:
                    state.deadline = now + self.group_wait
                else:
                    state.deadline = state.last_sent + self.window
            group = state.group
            group.count += 1
            group.severity = max(group.severity, severity)
            group.first_at = alert.at if group.first_at is None else min(group.first_at, alert.at)
            group.last_at = alert.at if group.last_at is None else max(group.last_at, alert.at)
            key = alert.key
            entry = group.entries.get(key)
            if entry is not None:
                entry.count += 1
                entry.first_at = min(entry.first_at, alert.at)
                entry.last_at = max(entry.last_at, alert.at)
            elif len(group.entries) < self.max_entries:
                group.entries[key] = EntrySummary(summary, details, 1, alert.at, alert.at)
            else:
                group.omitted_count += 1
                if key in group.omitted_keys or len(group.omitted_keys) < MAX_OMITTED_DISTINCT:
                    group.omitted_keys.add(key)
                else:
                    group.beyond_cap = group.beyond_cap or _DistinctEstimate()
                    group.beyond_cap.add(key)
                    group.beyond_cap_count += 1
        if self.group_wait == 0:
            self.flush_due()
        return seq

    # -- delivery -------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        """Alerts waiting per kind (for tests and a status page)."""
        with self._lock:
            return {k: s.group.count for k, s in self._states.items() if s.group is not None}

    def backlog(self) -> int:
        """Notifications not yet delivered: groups waiting for their time, and queued retries."""
        with self._lock:
            return sum(s.group is not None for s in self._states.values()) + len(self._retries)

    def oldest_undelivered(self) -> int | None:
        """The number of the oldest alert not yet handled, or None when every one is.

        Handled: delivered, or given up (its attempts spent, or pushed out of a full retry
        queue). Waiting groups, queued retries and deliveries in progress are not handled.
        Alerts are numbered in the order :meth:`raise_alert` received them, so every alert
        numbered below the returned one is handled.
        """
        return min(self.undelivered(), default=None)

    def undelivered(self) -> set[int]:
        """The numbers of the alerts that can be :meth:`oldest_undelivered`: each waiting group's,
        queued retry's or delivery in progress's first alert (the others joined one of these)."""
        with self._lock:
            waiting = {s.group.first_seq for s in self._states.values() if s.group is not None}
            waiting.update(r.first_seq for r in self._retries)
            waiting.update(self._sending)
            return waiting

    def flush_due(self) -> list[Notification]:
        """Send every group whose wait or window has elapsed, and due retries."""
        return self._flush(force=False)

    def flush(self) -> list[Notification]:
        """Send every pending group now, whatever its deadline (shutdown, tests)."""
        return self._flush(force=True)

    def _flush(self, *, force: bool) -> list[Notification]:
        now = self._clock()
        ready: list[tuple[Notification, int]] = []
        with self._lock:
            for kind, state in self._states.items():
                if state.group is None or state.deadline is None:
                    continue
                if force or now >= state.deadline:
                    ready.append((self._build(kind, state.group), state.group.first_seq))
                    state.group = None
                    state.deadline = None
                    state.last_sent = now
            retries = [r for r in self._retries if (force or now >= r.next_at) and r.next_at != math.inf]
            self._retries = [r for r in self._retries if r not in retries]
            sending = [seq for _, seq in ready] + [r.first_seq for r in retries]
            self._sending += sending
        # A sink that could not be reached in this round (SmtpConnectionError) is not tried again
        # until the next: each try of a server that does not answer waits out its timeout, and
        # the monitor's loop (journal reading, SIGTERM) waited for every notification due.
        # A sink whose login was refused is held from then on (inf): the alerts that waited for
        # their group or window, sent at the stop that follows, each logged in again (a refused
        # login more, which a server counts towards locking the account).
        unreachable: list[tuple[AlertSink, float]] = [(sink, math.inf) for sink in self._refused]
        deferred: list[str] = []  # the kinds of the notifications that wait for the next round

        def deliver(sink: AlertSink, notification: Notification, attempts: int, seq: int) -> None:
            due = next((at for down, at in unreachable if down is sink), None)
            if due is not None:  # not a try: its attempts stay as they are, due with the one that was
                self._queue(_Retry(sink, notification, attempts, due, seq))
                if due != math.inf:
                    deferred.append(notification.kind)
                return
            due = self._deliver(sink, notification, attempt=attempts + 1, first_seq=seq)
            if due is not None:
                unreachable.append((sink, due))

        try:
            with self._send_lock:
                for notification, seq in ready:
                    for sink in self.sinks:
                        deliver(sink, notification, 0, seq)
                for retry in retries:
                    deliver(retry.sink, retry.notification, retry.attempts, retry.first_seq)
            if deferred:
                log.warning(
                    "alert sink unreachable: the other notifications due wait for the next retry",
                    extra={"waiting": len(deferred), "kinds": sorted(set(deferred))},
                )
        finally:
            with self._lock:  # a failed delivery is in the retry queue by now
                for seq in sending:
                    self._sending.remove(seq)
        return [notification for notification, _ in ready]

    def _build(self, kind: str, group: _Group) -> Notification:
        entries = sorted(group.entries.values(), key=lambda e: (-e.count, e.first_at))
        assert group.first_at is not None and group.last_at is not None
        return Notification(
            kind=kind,
            severity=group.severity,
            count=group.count,
            first_at=group.first_at,
            last_at=group.last_at,
            entries=tuple(entries),
            omitted_distinct=len(group.omitted_keys),
            omitted_count=group.omitted_count,
            source=self.source,
            beyond_cap_distinct=group.beyond_cap.estimate() if group.beyond_cap is not None else 0,
            beyond_cap_count=group.beyond_cap_count,
        )

    def _queue(self, retry: _Retry) -> None:
        """Queue a retry; beyond ``max_queued`` the oldest are dropped, each said in an ERROR line."""
        with self._lock:
            self._retries.append(retry)
            dropped = self._retries[: -self.max_queued]
            del self._retries[: -self.max_queued]
        for old in dropped:
            log.error(
                "alert dropped: too many undelivered notifications queued",
                extra={"sink": getattr(old.sink, "name", type(old.sink).__name__),
                       "alert_delivery_failed": old.notification.kind},
            )  # fmt: skip

    def _deliver(
        self, sink: AlertSink, notification: Notification, *, attempt: int, first_seq: int
    ) -> float | None:
        """One try; a failure is logged and queued for a retry when one may help. When ``sink``
        itself could not be reached (not a partial refusal, retried to some recipients), the
        time its retry is due; when it refused our login, ``math.inf``: the notification is held
        (:attr:`login_refused`); else None."""
        name = getattr(sink, "name", type(sink).__name__)
        try:
            sink.send(notification)
        except Exception as exc:  # noqa: BLE001 - a broken sink must never break the caller
            self.failed += 1
            retryable = getattr(exc, "retryable", True)
            # An unreachable server (down for maintenance, a network cut) is retried for as
            # long as it takes, the delay capped at max_retry_delay: with max_attempts alone,
            # an outage longer than about 90 s dropped every alert raised during it. Each kind
            # yields at most one notification per window, and max_queued bounds the queue.
            outage = isinstance(exc, SmtpConnectionError)
            will_retry = retryable and (outage or attempt < self.max_attempts)
            refused = isinstance(exc, SmtpAuthError)
            retry_sink = getattr(exc, "retry_with", None) or sink
            log.error(
                "alert delivery failed",
                extra={
                    "sink": name,
                    "alert_delivery_failed": notification.kind,
                    "attempt": attempt,
                    "will_retry": will_retry,
                    **({"held": "until a restart with a login the server takes"} if refused else {}),
                    "error": scrub_text(f"{type(exc).__name__}: {exc}"),
                },
            )
            if refused:
                self.login_refused = scrub_text(str(exc))
                self._refused.append(sink)
                self._queue(_Retry(sink, notification, attempt, math.inf, first_seq))
                return math.inf
            if not will_retry:
                return None
            due = self._clock() + min(self.retry_delay * attempt, self.max_retry_delay)
            self._queue(_Retry(retry_sink, notification, attempt, due, first_seq))
            return due if outage and retry_sink is sink else None
        self.sent += 1
        return None

    # -- background ticker ----------------------------------------------------------------
    def start(self, interval: float = 1.0) -> None:
        """Run :meth:`flush_due` every ``interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()

        def tick() -> None:
            while not self._stop.wait(interval):
                self.flush_due()

        self._thread = threading.Thread(target=tick, name="alerter", daemon=True)
        self._thread.start()

    def close(self) -> list[Notification]:
        """Stop the ticker and send everything still pending (one attempt each).

        What that attempt could not deliver (an SMTP server down at shutdown) stays queued, so
        :meth:`oldest_undelivered` still names it (a monitor with ``--cursor-file`` resumes
        before its entry), and one line says it was not sent: the failures' ``will_retry``
        meant a retry this process will no longer make."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        sent = self.flush()
        with self._lock:
            left = [r.notification.kind for r in self._retries]
        if left:
            log.error(
                "alerts not delivered before stopping",
                extra={"undelivered": len(left), "kinds": sorted(set(left))},
            )
        return sent

    def __enter__(self) -> Alerter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoggingSink:
    """Write each notification as one structured log line at its severity.

    The message is the first entry's summary; ``alert_kind``, ``alert_count`` and
    ``alert_entries`` carry the rest. When the service runs under the journald log driver the
    monitor picks the line up and emails it under the same kind (grouped again there).
    """

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("movierec.alerts")

    def send(self, notification: Notification) -> None:
        level = int(notification.severity)
        first = notification.entries[0].summary if notification.entries else notification.kind
        self.logger.log(
            level,
            first,
            extra={
                "alert_kind": notification.kind,
                "alert_count": notification.count,
                "alert_entries": [
                    {"summary": e.summary, "count": e.count, **dict(e.details)}
                    for e in notification.entries[:5]
                ],
            },
        )


SMTP_SECURITY = ("none", "starttls", "ssl")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpSink:
    """Send notifications by email through an SMTP server.

    ``security``: "none" (plain, for a local relay), "starttls" (port 587) or "ssl"
    (implicit TLS, port 465). With ``username``/``password`` it logs in (after TLS when
    TLS is used). The password lives in this object only; ``repr`` and errors omit it.
    One connection per notification: alerts are rare and a kept-open connection would be
    dropped by the server between them anyway.
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        sender: str,
        recipients: Iterable[str],
        username: str | None = None,
        password: str | None = None,
        security: str = "none",
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if security not in SMTP_SECURITY:
            raise ValueError(f"security must be one of {SMTP_SECURITY}, not {security!r}")
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        if not self.recipients:
            raise ValueError("at least one recipient is required")
        self._listed = self.recipients  # the To header: every recipient, also in a retry to some
        self.username = username
        self._password = password
        self.security = security
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._warned_plain = False

    def __repr__(self) -> str:
        auth = f", user={self.username!r}" if self.username else ""
        return f"SmtpSink({self.host}:{self.port}, security={self.security}{auth})"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        """Open, secure and authenticate a connection, mapping failures to clear errors."""
        smtp: smtplib.SMTP | None = None
        context = self._context() if self.security != "none" else None
        requested = _CertificateRequested(context) if context is not None else None
        try:
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
                if requested is not None:
                    requested.answered = True  # its greeting, over TLS
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            self._ehlo(smtp)
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise AlertDeliveryError(
                        f"SMTP server {self.where} does not offer STARTTLS "
                        "(use implicit TLS on port 465, or plain for a local relay)",
                        retryable=False,
                    )
                smtp.starttls(context=context)
                self._ehlo(smtp)
                if requested is not None:
                    requested.answered = True
            if self.username is not None and self._password is not None:
                if self.security == "none" and not _is_loopback(self.host) and not self._warned_plain:
                    self._warned_plain = True
                    log.warning(
                        "logging in to SMTP without TLS; the password crosses the network in clear",
                        extra={"smtp_server": self.where},
                    )
                smtp.login(self.username, self._password)
            return smtp
        except smtplib.SMTPAuthenticationError as exc:
            self._close_quietly(smtp)
            if _is_temporary(exc.smtp_code):  # 454: the server cannot check it now, not a wrong password
                raise SmtpConnectionError(
                    f"SMTP server {self.where} cannot log in user {self.username!r} now: "
                    f"{exc.smtp_code} {_decode(exc.smtp_error)}"
                ) from None
            raise SmtpAuthError(
                f"SMTP server {self.where} rejected the login for user {self.username!r}: "
                f"{exc.smtp_code} {_decode(exc.smtp_error)}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            self._close_quietly(smtp)
            hint = "a relay that takes mail without a login: --no-auth"
            if self.security == "none":
                hint = f"servers often offer AUTH only after STARTTLS: try --is-secure; {hint}"
            raise AlertDeliveryError(f"SMTP server {self.where}: {exc} ({hint})", retryable=False) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError) as exc:
            # The server closed the connection where TLS began (restarting, overloaded, a network
            # cut): the "dropped the connection" it is without TLS, not a TLS setting to fix. As
            # one, it was exit 2 at start (not restarted) and each alert dropped at its first try.
            self._close_quietly(smtp)
            self._certificate_required(requested, exc)
            raise SmtpConnectionError(
                f"SMTP server {self.where} closed the connection during the TLS handshake: {exc}"
            ) from None
        except ssl.SSLError as exc:
            self._close_quietly(smtp)
            self._certificate_required(requested, exc)
            raise AlertDeliveryError(
                f"TLS with SMTP server {self.where} failed: {exc}", retryable=False
            ) from None
        except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected) as exc:
            self._close_quietly(smtp)
            self._certificate_required(requested, exc)
            raise SmtpConnectionError(f"cannot talk to SMTP server {self.where}: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            # a 4xx to EHLO or STARTTLS (421, a relay shutting down; 454, TLS not available now) is
            # "try again later", as it is to the login or the mail: it was exit 2 at start
            self._close_quietly(smtp)
            if _is_temporary(exc.smtp_code):
                raise SmtpConnectionError(
                    f"SMTP server {self.where} answered {exc.smtp_code} {_decode(exc.smtp_error)}"
                ) from None
            raise AlertDeliveryError(f"SMTP server {self.where}: {exc}") from None
        except smtplib.SMTPException as exc:  # before OSError: SMTPException subclasses it
            self._close_quietly(smtp)
            raise AlertDeliveryError(f"SMTP server {self.where}: {exc}") from None
        except OSError as exc:
            self._close_quietly(smtp)
            self._certificate_required(requested, exc)
            raise SmtpConnectionError(
                f"cannot reach SMTP server {self.where}: {exc.strerror or exc or type(exc).__name__}"
            ) from None
        except UnicodeError as exc:
            # smtplib encodes the AUTH exchange as ASCII (and a host name with IDNA): a password
            # like "pässwort" raised UnicodeEncodeError, past every clause above, and the monitor
            # died at start with a traceback instead of exit 2 and one line.
            if smtp is None:
                message = f"SMTP server name {self.host!r} is not a valid host name ({exc})"
            else:
                message = (
                    f"cannot log in to SMTP server {self.where} as {self.username!r}: the user name "
                    "and password must be ASCII (Python's SMTP client sends them as ASCII)"
                )
            self._close_quietly(smtp)
            raise AlertDeliveryError(message, retryable=False) from None
        except AlertDeliveryError:
            self._close_quietly(smtp)
            raise

    def _certificate_required(self, requested: _CertificateRequested | None, exc: Exception) -> None:
        """Raise :class:`SmtpClientCertificateRequired` when the connection ended (``exc``) after
        the server asked for a client certificate and before it answered over TLS: under TLS 1.2
        as a handshake cut short or a "handshake failure" alert, under TLS 1.3 (the client's
        handshake is over before the server checks it) as a connection closed at the first read,
        even with the alert "certificate required". Each was a dropped connection (retried, exit
        75 at start, restarted for ever) or a vague TLS failure. Not when the server's own
        certificate failed, or it answered (an SMTP reply)."""
        if requested is None or not requested.refused:
            return
        if isinstance(exc, (ssl.SSLCertVerificationError, smtplib.SMTPResponseException)):
            return
        raise SmtpClientCertificateRequired(
            f"SMTP server {self.where} asked for a TLS client certificate and ended the connection "
            f"when none was sent ({exc or type(exc).__name__}): it requires one, and the monitor "
            "cannot send one; use a port or relay of it that takes a login without one"
        ) from None

    @staticmethod
    def _ehlo(smtp: smtplib.SMTP) -> None:
        """EHLO; a 4xx reply raised (smtplib returns it, and the server then looked like one
        offering neither AUTH nor STARTTLS: "try --is-secure", exit 2)."""
        code, reply = smtp.ehlo()
        if _is_temporary(code):
            raise smtplib.SMTPResponseException(code, reply)

    @staticmethod
    def _close_quietly(smtp: smtplib.SMTP | None) -> None:
        if smtp is not None:
            with contextlib.suppress(Exception):
                smtp.close()

    def verify(self) -> None:
        """Connect, log in and name the sender and recipients once (MAIL FROM, RCPT TO, RSET: no
        email is sent), so a wrong password, or a sender or recipients the server refuses, is
        reported at start, not at 3 a.m. with the alert it drops."""
        smtp = self._connect()
        with self._session(smtp):
            self._check_envelope(smtp)

    @contextlib.contextmanager
    def _session(self, smtp: smtplib.SMTP) -> Iterator[None]:
        """The block's exchange with the server, the connection closed after it (QUIT, then closed
        whatever QUIT did); a connection dropped in it is a retryable :class:`SmtpConnectionError`."""
        try:
            yield
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise SmtpConnectionError(f"SMTP server {self.where} dropped the connection: {exc}") from None
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            self._close_quietly(smtp)

    def _check_envelope(self, smtp: smtplib.SMTP) -> None:
        """A refusal that would drop every alert (the sender, or every recipient, refused for good:
        5xx) is an :class:`AlertDeliveryError`, not retryable; one that lets alerts through, or is
        temporary (4xx: retried when an alert is sent), is a warning."""
        options = ["SMTPUTF8"] if not all(a.isascii() for a in (self.sender, *self.recipients)) else []
        if options and not smtp.has_extn("smtputf8"):
            raise AlertDeliveryError(
                f"SMTP server {self.where} does not take non-ASCII addresses (no SMTPUTF8): "
                f"{', '.join(a for a in (self.sender, *self.recipients) if not a.isascii())}",
                retryable=False,
            )
        code, reply = smtp.mail(self.sender, options)
        if code != 250:
            message = f"SMTP server {self.where} refused sender {self.sender!r}: {code} {_decode(reply)}"
            if not _is_temporary(code):
                raise AlertDeliveryError(message, retryable=False)
            log.warning("SMTP start-up check: %s; retried when an alert is sent", message)
            return
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in self.recipients:
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, reply)
        with contextlib.suppress(smtplib.SMTPException):
            smtp.rset()
        permanent = {r: answer for r, answer in refused.items() if not _is_temporary(answer[0])}
        if len(permanent) == len(self.recipients):
            raise AlertDeliveryError(
                f"SMTP server {self.where} refused recipients {_replies(permanent)}", retryable=False
            )
        if refused:
            log.warning(
                "SMTP start-up check: the server refused some alert recipients",
                extra={
                    "smtp_server": self.where,
                    "refused_recipients": _replies(refused),
                    "will_retry": not permanent,
                },
            )

    def build_message(self, notification: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = _header(notification.subject)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self._listed)
        msg["Date"] = email.utils.formatdate(localtime=False)
        msg["Message-ID"] = email.utils.make_msgid(domain=socket.getfqdn() or "localhost")
        msg["X-Movierec-Alert-Kind"] = _header(notification.kind)
        msg["X-Movierec-Alert-Count"] = str(notification.count)
        msg.set_content(_encodable(notification.body))
        return msg

    def send(self, notification: Notification) -> None:
        msg = self.build_message(notification)
        smtp = self._connect()
        with self._session(smtp):
            try:
                refused = smtp.send_message(msg, from_addr=self.sender, to_addrs=self.recipients)
            except smtplib.SMTPRecipientsRefused as exc:
                message = f"SMTP server {self.where} refused recipients {_replies(exc.recipients)}"
                if all(_is_temporary(code) for code, _ in exc.recipients.values()):
                    raise SmtpConnectionError(message) from None
                raise AlertDeliveryError(message, retryable=False) from None
            except smtplib.SMTPResponseException as exc:  # sender refused, data refused, ...
                sender = isinstance(exc, smtplib.SMTPSenderRefused)
                what = f"refused sender {self.sender!r}" if sender else "answered"
                message = f"SMTP server {self.where} {what}: {exc.smtp_code} {_decode(exc.smtp_error)}"
                if _is_temporary(exc.smtp_code):
                    raise SmtpConnectionError(message) from None
                raise AlertDeliveryError(message, retryable=False) from None
        if refused:
            self._partly_refused(refused)

    def _partly_refused(self, refused: Mapping[str, tuple[int, bytes | str]]) -> None:
        """The server took the message for some recipients and refused the others: smtplib
        returns those instead of raising, and the digest counted as delivered to everyone.
        A warning names them; when every refusal is temporary, a retry goes to them only."""
        delivered = [r for r in self.recipients if r not in refused]
        temporary = all(_is_temporary(code) for code, _ in refused.values())
        log.warning(
            "SMTP server refused some alert recipients",
            extra={
                "smtp_server": self.where,
                "refused_recipients": _replies(refused),
                "delivered_to": delivered,
                "will_retry": temporary,
            },
        )
        if temporary:
            retry = copy.copy(self)
            retry.recipients = [r for r in self.recipients if r in refused]
            raise SmtpConnectionError(
                f"SMTP server {self.where} refused recipients {_replies(refused)} "
                f"(delivered to {', '.join(delivered)})",
                retry_with=retry,
            )


# Control characters but tab and line breaks (C0, DEL, C1): a MESSAGE may hold any byte (a binary
# field, a process dumping to stderr, a terminal's colour codes), and they went raw into subject
# and body, which RFC 5322 leaves out of a message: a mail reader written in C cut the subject at
# a NUL, a terminal one played the escape sequences.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _encodable(text: str) -> str:
    """Lone surrogates (a JSON log line's "\\udcff") cannot be encoded into an email: '?' instead;
    control characters are written as their escape (\\x00, \\x1b)."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.encode("utf-8", "replace").decode("utf-8")


def _header(text: str) -> str:
    """One line (a line break in a header value is a ValueError: the email was never sent)."""
    return _encodable(" ".join(text.split()))


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _replies(refused: Mapping[str, tuple[int, bytes | str]]) -> dict[str, str]:
    """smtplib's refused recipients as {address: "code reply"}, sorted by address."""
    return {addr: f"{code} {_decode(text)}" for addr, (code, text) in sorted(refused.items())}


def load_smtp_password(
    *,
    password: str | None = None,
    password_file: str | os.PathLike[str] | None = None,
    env_var: str = DEFAULT_PASSWORD_ENV,
    file_env_var: str = DEFAULT_PASSWORD_FILE_ENV,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Find the SMTP password without it ever touching a command line or a log.

    Order: an explicit value, an explicit file, ``$MONITOR_SMTP_PASSWORD``, the file named
    by ``$MONITOR_SMTP_PASSWORD_FILE`` (Docker/Kubernetes secrets). Returns None when no
    source is configured (the caller may prompt). A file keeps its content minus one
    trailing newline (app/secret_files.py, as the service's secret files); an unreadable or
    empty configured source is an error, not a silent fallback to the next one.
    """
    env = os.environ if environ is None else environ
    if password is not None:
        return password
    if password_file is None and env.get(env_var):
        return env[env_var]
    path = password_file if password_file is not None else env.get(file_env_var) or None
    if path is None:
        return None
    try:
        value = read_secret_file(path, "--password-file" if password_file is not None else file_env_var)
    except SecretFileError as exc:
        raise PasswordSourceError(f"SMTP password: {exc}") from None
    try:
        mode = Path(path).stat().st_mode
        if mode & 0o004:
            log.warning("SMTP password file is world-readable; chmod 600 it", extra={"path": str(path)})
    except OSError:
        pass
    return value
