"""JSON-lines logging with redaction.

Every log record becomes one JSON object on one line of stdout. Under Docker's journald
log driver each line becomes one journal entry, and ``monitor-docker.py`` parses the
``level`` field back out of the entry's MESSAGE, so the line format is a contract between
the service and its monitor: keep ``ts``, ``level``, ``logger`` and ``message``.

Secrets must never reach a log line, whoever wrote the call: values of secret-looking keys
are replaced, and bearer tokens, JWTs, ``password=...`` and ``password: ...`` pairs (quoted or
not, JSON's too) and URLs' passwords are scrubbed
from message text and exception traces. Redaction happens in the formatter so it also covers records
from third-party libraries. A text of megabytes is cut to its start and end (MAX_TEXT_CHARS), so a
line stays one the monitor can read whole.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import IO, Any

# The levels a setting or an option may name (MOVIEREC_LOG_LEVEL, `movierec --log-level`).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

REDACTED = "[REDACTED]"

# Keys whose values are secrets, matched case-insensitively anywhere in the key name
# ("smtp_password", "X-Auth-Token", "refresh_token", "client_secret", ODBC's and MySQL's "pwd", ...).
_SECRET_KEY = re.compile(
    r"passw(or)?d|pwd|passphrase|^pass$|secret|token|authori[sz]ation|api[_-]?key|cookie|credential"
    r"|private[_-]?key|jwt",
    re.IGNORECASE,
)

# A run of key characters that contains a secret word, matched without backtracking: the
# lookahead scans the run once for the word, then the run is taken whole (possessive ``++``),
# and a run is only tried from its first character. Written as ``[\w-]*(?:token|...)[\w-]*``,
# the engine retried every split of every run at every word boundary: quadratic, 78 s for one
# 40 kB line of hyphenated words (a slug, joined UUIDs, a base64url blob), and this runs on
# every line the service logs and on every alert of the monitor.
#
# A key that ends in a word saying what is known about its secret, not the secret (when it
# changed, its type, its file, its length: password_changed_at, token_type, SESSION_PASSWORD_FILE,
# min_password_length), names none: its value was replaced too, the useful part of the line.
# Looked for behind the run's end, one lookbehind per length: O(1) a run, where a lookahead
# trying each suffix at each "_" of the run took 1.4 s for a megabyte of underscores.
_NOT_SECRET_SUFFIXES = (
    *("at", "on", "ts", "id", "ttl", "age", "len", "dir", "url", "uri", "time", "date", "type", "kind"),
    *("file", "path", "name", "size", "count", "expire", "expiry", "length", "header", "expires"),
    *("changed", "updated", "created", "endpoint", "expires_in", "expires-in"),
)
_NOT_SECRET_KEY = re.compile(rf"(?i)[_-](?:{'|'.join(_NOT_SECRET_SUFFIXES)})$")
_NOT_A_SECRET_KEY_END = "".join(
    rf"(?<![_-](?:{'|'.join(words)}))"
    for words in (
        [word for word in _NOT_SECRET_SUFFIXES if len(word) == size]
        for size in sorted({len(word) for word in _NOT_SECRET_SUFFIXES})
    )
)
_SECRET_WORDS = r"passw(?:or)?d|pwd|passphrase|secret|token|api[_-]?key|private[_-]?key"  # noqa: S105  # nosec B105 - the redaction pattern
_SECRET_WORD = rf"(?=[\w-]*?(?:{_SECRET_WORDS}))[\w-]++{_NOT_A_SECRET_KEY_END}"
# A plural key (tokens, max_tokens, revoked_tokens: one that ends in "s") with a number is a
# count: its value is kept where an unquoted value is scrubbed. With anything else (tokens=abc)
# it is scrubbed.
_PLURAL_COUNT = r"(?:(?<=s)(?P<plural>))?+"
_UNLESS_COUNT = r"(?(plural)(?!\d+(?:\.\d+)?(?![^\s,;&'\"}\])])))"


# Where an unquoted value would start: not a quoted one (its own pattern's), nor a placeholder
# ([REDACTED], <token>), so scrubbing twice, or a line that names a placeholder, keeps the text.
_UNQUOTED_VALUE = r"""(?![bru]{0,2}\\?["']|\[REDACTED\]|<[\w -]*>)"""

# Words that follow "password:" or "token:" in prose: JSON literals and words no password should
# be (each shorter than the 12 characters an admin password and the 32 a JWT secret need; the
# session password has no minimum: one of these words as a session password would be kept).
_PROSE_WORD = (
    r"(?:none|null|nil|true|false|yes|no|not|set|unset|empty|missing|required|invalid|expired"
    r"|revoked|wrong|incorrect|ok|see|use|send|must|is|was|the|a|an|every|each|from|for|to|cannot"
    r"|could|failed|error|unknown|denied)"
)


# What the key-value and Authorization patterns need in a text before they can match, looked for
# with a substring search (~0.3 us) where each pattern tried every word of a line for each secret
# word (~10 us each on a short line with a colon, most lines with a time in them). Case-folded as
# the patterns' (?i) matches: a long s is an s, the Kelvin sign a k; a dotted capital I (folded
# to an i and a combining dot) and a dotless i are an i too.
_SECRET_WORD_TEXTS = (
    *("passw", "pwd", "passphrase", "secret", "token", "apikey", "api_key", "api-key"),
    *("privatekey", "private_key", "private-key"),
)


def _may_name_a_secret(text: str) -> bool:
    """True when ``text`` may hold a secret word (password, token...) or "authori[sz]ation"."""
    folded = text.casefold().replace("\u0131", "i").replace("\u0307", "")
    return any(word in folded for word in _SECRET_WORD_TEXTS) or "authori" in folded


def _has_whitespace(text: str) -> bool:
    """True when ``text`` may hold a ``\\s`` character: every one but the ASCII space is a
    Unicode separator or control character, which ``str.isprintable`` rejects."""
    return " " in text or not text.isprintable()


# Patterns scrubbed from free text, each tried only where a test it cannot match without says
# it may match: most of what is scrubbed is short text with no secret (every access line's
# path, endpoint and request id), and such a test is ~50 ns against ~1 us for a regex pass.
# Order matters: the Authorization and JWT patterns run after the bearer one.
_TEXT_PATTERNS: tuple[tuple[Callable[[str], bool], re.Pattern[str], str], ...] = (
    # "Bearer <credential>", "Basic <credential>". Prose is kept, not taken for a credential:
    # a capitalised word after either ("Basic Authentication"), and a lowercase one after a
    # lowercase "bearer"/"basic" ("basic popularity", "bearer authentication"); "Bearer
    # abcdefghijkl" is a token. A header's credential is scrubbed whatever it is by the
    # Authorization pattern below. The scheme is taken atomically: once it is lowercase, the
    # engine must not take it again as the case-blind one, which would skip the prose test.
    (
        _has_whitespace,
        re.compile(
            r"(?i)\b((?>(?P<lowercase>(?-i:bearer|basic))|bearer|basic))\s+"
            r"(?-i:(?![A-Z][a-z]*+(?![A-Za-z0-9._~+/=-]))(?(lowercase)(?![a-z]++(?![A-Za-z0-9._~+/=-]))))"
            r"[A-Za-z0-9._~+/=-]{8,}"
        ),
        r"\1 " + REDACTED,
    ),
    # An Authorization header's credentials whatever their scheme (Token, ApiKey, none) or length
    # (the pattern above wants 8 characters after Bearer/Basic), as a header, JSON or a repr
    # writes it; its scheme is kept. A placeholder or a prose word after it is left as it is.
    (
        lambda text: (":" in text or "=" in text) and _may_name_a_secret(text),
        re.compile(
            r"""(?i)(?<![\w-])((?:proxy-)?authori[sz]ation(?:\\?["'])?[ \t]*[:=][ \t]*(?:\\?["'])?"""
            r"(?:(?:bearer|basic|token|digest|negotiate|ntlm|api-?key|key|jwt|hmac|hawk|oauth|dpop)[ \t]+)?+)"
            rf"""(?!{_PROSE_WORD}(?![^\s,;'"\\])|\[REDACTED\]|<[\w -]*>)[^\s,;'"\\]+"""
        ),
        r"\1" + REDACTED,
    ),
    # JWTs. Tried once per run of token characters (the run's first "eyJ" after a word boundary,
    # taken atomically): as ``\beyJ...``, every "-eyJ" of a run rescanned the run to its end,
    # quadratic (0.4 s for 40 kB of "eyJ-", minutes for a 1 MB line the monitor joined).
    (
        lambda text: "eyJ" in text,
        re.compile(
            r"(?<![A-Za-z0-9_-])(?>([A-Za-z0-9_-]*?)\b(?=eyJ))"
            r"eyJ[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]{5,}+\.[A-Za-z0-9_-]*+"
        ),
        r"\1" + REDACTED,
    ),
    # key: value, key = value, "key": "value": the separator a colon or an equals sign, with or
    # without spaces (YAML, a header, an ini file, a debug line, a repr, JSON, libpq conninfo).
    # A quoted value is taken whole to the quote that closes it, past the other quote and a
    # backslash-escaped one (JSON's \", conninfo's \'), and so is JSON held in a JSON string
    # (\"password\": \"...\"); a bytes repr's b'...' too. An empty one ("") is left as it is; one
    # whose closing quote is not on its line (a message cut short by the library that wrote it, a
    # line break in the value) is scrubbed to the line's end.
    (
        lambda text: ("=" in text or ":" in text) and _may_name_a_secret(text),
        re.compile(
            rf"(?i)(?<![\w-])({_SECRET_WORD}(?:\\?[\"'])?[ \t]*[:=][ \t]*[bru]{{0,2}})"
            r"""(\\"|"|')(?:"""
            r"""(?<=\\")(?:\\\\\\"|[^"\\\n]|\\[^"\n])++(?=\\"|\n|\Z)"""
            r"""|(?<!\\")(?<=")(?:[^"\\\n]|\\.)++(?="|\n|\Z)"""
            r"""|(?<=')(?:[^'\\\n]|\\.)++(?='|\n|\Z)"""
            r")(?:\2)?"
        ),
        r"\1\2" + REDACTED + r"\2",
    ),
    # key=value, key = value (query strings, DSNs in kwargs, CLI-style pairs, env dumps)
    (
        lambda text: "=" in text and _may_name_a_secret(text),
        re.compile(
            rf"(?i)(?<![\w-])({_SECRET_WORD}{_PLURAL_COUNT}[ \t]*=[ \t]*){_UNLESS_COUNT}{_UNQUOTED_VALUE}"
            r"[^\s&;,'\"]+"
        ),
        r"\1" + REDACTED,
    ),
    # key: value (YAML, a header, a label in a debug line). Prose writes the same shape ("no
    # session password: set SESSION_PASSWORD", "invalid token: expired"): a few words no secret
    # is (none, expired, set...) are left as they are, and so are a following "//" (a scheme) and
    # the next label ("SMTP password: MONITOR_SMTP_PASSWORD_FILE: /run/... is empty"). The value
    # runs to the next space or quote: a , or ; in it is part of it (YAML's, a header's), one
    # before a space ends it ("token: abc, user: bob").
    (
        lambda text: ":" in text and _may_name_a_secret(text),
        re.compile(
            rf"(?i)(?<![\w-])({_SECRET_WORD}{_PLURAL_COUNT}(?:\\?[\"'])?[ \t]*:[ \t]*){_UNLESS_COUNT}"
            rf"(?!//|{_PROSE_WORD}(?![^\s,;'\"])|(?=[\w-]*?(?:{_SECRET_WORDS}))[\w-]++:(?!\S))"
            rf"{_UNQUOTED_VALUE}(?:[^\s,;'\"]|[,;](?=[^\s'\"]))+"
        ),
        r"\1" + REDACTED,
    ),
    # A command line's option and its value: --password hunter2, an argv list's repr
    # ('--password', 'hunter2'), as a failed command's text shows it (monitor-docker.py takes
    # --password). Not a next option (--password --smtp-user) nor a prose word (--password is...).
    (
        lambda text: "-" in text and _may_name_a_secret(text),
        re.compile(
            rf"""(?i)(?<![\w-])(?=-)({_SECRET_WORD}(?:["'],)?[ \t]+(["']?))"""
            rf"""(?!-|{_PROSE_WORD}(?![^\s,;'"\]]))"""
            r"""(?:(?<=')[^'\n]++(?=')|(?<=")[^"\n]++(?=")|(?<!['"])[^\s'",\])]++)"""
        ),
        r"\1" + REDACTED,
    ),
    # URL credentials: scheme://user:password@host (the scheme tried from the start of its run);
    # the user may be empty, as in Redis's redis://:password@host, or hold an @ (an e-mail
    # address, Azure PostgreSQL's user@server: both readers take the user up to the :, and the
    # password leaked whole when the user stopped at its @; after a user with an @, a ":"
    # followed by "//" is the next URL's scheme, not a password). The password is pasted
    # unencoded as often as not, and its reader takes a /, #, ? or : in it as part of it
    # (SQLAlchemy reads to the @) and an @ too (redis-py reads to the host part's last @): it
    # runs to the last @ before the next space or the next scheme's "://" (another URL after
    # this one, and the bound that keeps a line of "a://b:c" runs linear). A URL with a port
    # and an @ further on without a space between ("http://h:80/~a@b") is masked too: as
    # written, "80/~a" may be a password.
    (
        lambda text: "://" in text,
        re.compile(
            r"(?i)(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*+://(?:[^\s:/@]*+|[^\s:/@]*+@[^\s:/]*+(?=:(?!//))))"
            r":(?:(?!://)\S)+@"
        ),
        r"\1:" + REDACTED + "@",
    ),
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)

# Fields bound to the current request/task (request id, endpoint...), merged into each line.
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "movierec_log_context", default=_EMPTY
)

_HANDLER_MARK = "_movierec_json_handler"

# Third-party loggers whose INFO lines say nothing to an operator: alembic announces each of
# its autogenerate plugins ("setup plugin alembic.autogenerate.tables", eight lines) when a
# command-line process imports it after logging is configured.
_QUIET_LOGGERS = {"alembic.runtime.plugins": logging.WARNING}

# Terminal colour and style sequences (werkzeug styles its banner and request lines): escape
# codes inside a JSON field are noise to every reader of the line, journald and the monitor.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# A line is at most a few hundred kB: the monitor joins Docker's 16 kB journald chunks back into
# one line up to 1 MB (app/monitoring/journal.py, MAX_JOINED_BYTES) and hands a longer one over
# unparsed, where an ERROR fell back to stdout's priority, INFO, and was never alerted on. An
# exception text or a message of megabytes (a library's repr of a frame, a statement with
# thousands of rows) keeps its start and its end: the exception's type and the innermost frames.
MAX_TEXT_CHARS = 32 * 1024  # message, exc, stack: each
MAX_LINE_CHARS = 128 * 1024  # past it, each extra's value is clipped too
_MAX_EXTRA_CHARS = 2 * 1024


def _clip(text: str, limit: int) -> str:
    """``text``, or its first and last ``limit // 2`` characters with a note of what is omitted."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return _omitted(text[:keep], len(text) - 2 * keep, text[-keep:])


def _omitted(head: str, omitted: int, tail: str) -> str:
    """A cut text as a line shows it: its start, how much is left out, its end."""
    return f"{head} ... [{omitted} characters omitted] ... {tail}"


def _scrub_clipped(text: str) -> str:
    """:func:`scrub_text`, then :func:`_clip` to ``MAX_TEXT_CHARS``: scrubbed before it is cut, so
    no cut leaves half a URL the scrubber no longer knows; a long text's start and end are scrubbed
    apart, each with a margin as long as what is kept, not the megabytes between."""
    if len(text) <= MAX_TEXT_CHARS:
        return scrub_text(text)
    keep = MAX_TEXT_CHARS // 2
    head, tail = scrub_text(text[: 2 * keep])[:keep], scrub_text(text[-2 * keep :])[-keep:]
    return _omitted(head, len(text) - 2 * keep, tail)


def is_secret_key(key: str) -> bool:
    """True for keys whose values must never be logged (password, token, authorization...), not
    for those that say what is known about one (password_changed_at, token_type)."""
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def scrub_text(text: str) -> str:
    """Remove bearer tokens, JWTs, ``password=...``/``password: ...`` values and URLs' passwords
    from free text."""
    for may_match, pattern, replacement in _TEXT_PATTERNS:
        if may_match(text):
            text = pattern.sub(replacement, text)
    return text


def describe_error(error: BaseException | str, limit: int = 200) -> str:
    """An exception's text (or a reason already text) as a log line, a response, a stored record
    or an e-mail may carry it: scrubbed whole, then cut to its first ``limit`` characters.

    Cut first, a URL's password split by the cut lost its "@", no pattern knew the rest, and its
    start reached the line; the formatter's scrubbing came too late for text cut before it, and
    text that is not logged (an admin's status, a rejected-rows file) was never scrubbed at all.
    """
    return scrub_text(str(error))[:limit]


def redact(value: Any, _depth: int = 0) -> Any:
    """Return a copy of ``value`` with secret keys' values replaced and strings scrubbed.

    Works on nested dicts/lists/tuples so a request body or header map passed as ``extra``
    cannot leak a password one level down.
    """
    if _depth > 8:
        return "[...]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if is_secret_key(str(k)) else redact(v, _depth + 1)) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v, _depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub_text(str(value))


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind fields (request_id, endpoint, model_version...) to every line logged inside the block.

    Uses a context variable, so concurrent requests in threads or tasks do not mix.
    """
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Bind fields until :func:`reset_log_context` is called with the returned token.

    For frameworks with separate before/after hooks (Flask's before_request/teardown_request),
    where a ``with`` block cannot span the request.
    """
    return _context.set({**_context.get(), **fields})


def reset_log_context(token: contextvars.Token[Mapping[str, Any]]) -> None:
    """Undo one :func:`bind_log_context`."""
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """Format records as one JSON object per line: ts, level, logger, message, extras.

    ``ts`` is UTC ISO-8601 with milliseconds. Extras (``logger.info("...", extra={...})``)
    and bound context fields become top-level keys; keys that would clobber the core fields
    are prefixed with ``extra_``. Exceptions go into ``exc`` as text. Everything is redacted.
    """

    core_fields = ("ts", "level", "logger", "message")

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a bad %-format in a log call must not kill the request
            message = f"{record.msg!r} (log formatting failed: {type(exc).__name__})"
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _scrub_clipped(_ANSI_ESCAPE.sub("", message) if "\x1b" in message else message),
        }
        extras: dict[str, Any] = dict(_context.get())
        extras.update(
            {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}
        )
        for key, value in redact(extras).items():
            doc[f"extra_{key}" if key in self.core_fields else key] = value
        if record.exc_info:
            doc["exc"] = _scrub_clipped(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = _scrub_clipped(record.exc_text)
        if record.stack_info:
            doc["stack"] = _scrub_clipped(self.formatStack(record.stack_info))
        line = json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))
        if len(line) <= MAX_LINE_CHARS:
            return line
        for key, value in doc.items():  # an extra of megabytes: each long one is clipped
            if key not in self.core_fields and key not in ("exc", "stack"):
                text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
                if len(text) > _MAX_EXTRA_CHARS:
                    doc[key] = _clip(text, _MAX_EXTRA_CHARS)
        return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


class _LateBoundStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that looks up sys.stdout/sys.stderr at each write.

    Binding the stream at configuration time would keep writing to a replaced stdout
    (pytest's capture, a uwsgi worker's re-opened fds) after it changed.
    """

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self._stream_name = stream_name

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return getattr(sys, self._stream_name)  # type: ignore[no-any-return]

    @stream.setter
    def stream(self, value: IO[str]) -> None:  # StreamHandler.__init__ assigns it; ignore.
        pass


def configure_logging(level: int | str = "INFO", *, stream: str = "stdout") -> logging.Handler:
    """Install the JSON formatter on the root logger, writing to ``sys.stdout`` (or stderr).

    Idempotent: a second call updates the level and reuses the handler instead of doubling
    every line. Other handlers already on the root logger are left alone.
    """
    if stream not in ("stdout", "stderr"):
        raise ValueError("stream must be 'stdout' or 'stderr'")
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = _LateBoundStreamHandler(stream)
        setattr(handler, _HANDLER_MARK, True)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    else:
        handler._stream_name = stream  # type: ignore[attr-defined]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet)
    return handler


class LogEvery:
    """Logs a condition that lasts (the database down) when it starts, then at most every ``seconds``.

    One line per request that met it flooded the log during an outage, and monitor-docker.py
    turns each ERROR line into an alert. :meth:`due` says whether to log now; it returns how many
    occurrences went unlogged since the last line (None: not yet). No lock: two threads racing
    at worst log twice, and nothing can be left held across a fork.
    """

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        self._last = float("-inf")
        self._unlogged = 0

    def log(self, logger: logging.Logger, level: int, message: str, **extra: Any) -> None:
        """``logger.log(level, message)`` if :meth:`due`, with ``extra`` and ``unlogged_since_last``."""
        unlogged = self.due()
        if unlogged is not None:
            logger.log(level, message, extra={**extra, "unlogged_since_last": unlogged})

    def due(self) -> int | None:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self._unlogged += 1
            return None
        self._last = now
        unlogged, self._unlogged = self._unlogged, 0
        return unlogged
