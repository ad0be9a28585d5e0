"""Journal entry parsing, entry -> alert mapping, and the monitor's argument/password handling."""

from __future__ import annotations

import io
import json
import re

import pytest

from app.monitoring.alerts import Severity
from app.monitoring.journal import JournalFollower, normalize_level, parse_entry
from app.monitoring.monitor import ConfigError, build_parser, build_sink, entry_to_alert, resolve_password

pytestmark = pytest.mark.unit


def raw(message: object, priority: str | None = "6", **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "MESSAGE": message,
        "__REALTIME_TIMESTAMP": "1767268800000000",  # 2026-01-01T12:00:00Z
        "__CURSOR": "s=abc;i=1",
        "CONTAINER_NAME": "movierec",
        **extra,
    }
    if priority is not None:
        doc["PRIORITY"] = priority
    return doc


def test_our_json_line_level_wins_over_docker_priority() -> None:
    line = json.dumps(
        {"ts": "x", "level": "ERROR", "logger": "app.api", "message": "boom", "request_id": "r1"}
    )
    entry = parse_entry(raw(line, priority="6"))  # Docker: stdout -> priority 6
    assert entry.level == "ERROR" and entry.message == "boom" and entry.logger == "app.api"
    assert entry.fields is not None and entry.fields["request_id"] == "r1"
    assert entry.cursor == "s=abc;i=1" and entry.container_name == "movierec"
    assert entry.timestamp.isoformat() == "2026-01-01T12:00:00+00:00"


@pytest.mark.parametrize(
    ("message", "priority", "level"),
    [
        ("ERROR:app.api:something broke", "6", "ERROR"),
        ("[WARNING] disk at 91%", "6", "WARNING"),
        ("2026-01-01 12:00:00,123 WARN worker slow", "6", "WARNING"),
        ("CRITICAL out of memory", "6", "CRITICAL"),
        ("segfault in libfoo at 0x0", "3", "ERROR"),  # stderr without a level word: priority decides
        ("*** Starting uWSGI 2.0.31 (64bit) on [Thu Jan  1 12:00:00 2026] ***", "3", "INFO"),  # uwsgi routine
        ("listening on :8000", "6", "INFO"),
        ("kernel says hi", "4", "WARNING"),
        ("emergency", "0", "CRITICAL"),
        ("debugging", "7", "DEBUG"),
        ("no priority at all", None, "INFO"),
        ("an error occurred in the middle", "6", "INFO"),  # level words only count at the start
        ("{not json at all", "3", "ERROR"),
        (
            "[pid: 7|app: 0|req: 3/9] 10.0.0.1 () {34 vars in 512 bytes} [Thu Jan  1 12:00:00 2026] "
            "GET /api/recommend => generated 80 bytes in 3 msecs (HTTP/1.1 503) 4 headers in 150 bytes",
            "3",
            "ERROR",
        ),
        (
            "[pid: 7|app: 0|req: 4/10] 10.0.0.1 () {34 vars in 512 bytes} [Thu Jan  1 12:00:00 2026] "
            "POST /api/login => generated 60 bytes in 1 msecs (HTTP/1.1 401) 4 headers in 150 bytes",
            "3",
            "INFO",
        ),
        (  # the protocol is the client's text: one that writes a status into it forged an ERROR
            "[pid: 7|app: -|req: -/-] 10.0.0.1 (-) {24 vars in 239 bytes} [Thu Jan  1 12:00:00 2026] "
            "GET /nope => generated 60 bytes in 1 msecs (HTTP/1.1 500) x 404) 8 headers in 313 bytes "
            "(2 switches on core 0)",
            "3",
            "INFO",
        ),
        (  # and one that is not HTTP/<digits> left the line to Docker's stderr priority: ERROR
            "[pid: 7|app: -|req: -/-] 10.0.0.1 (-) {24 vars in 239 bytes} [Thu Jan  1 12:00:00 2026] "
            "GET /nope => generated 60 bytes in 1 msecs (HTTP/1.1\t500) 404) 8 headers in 311 bytes "
            "(1 switches on core 0)",
            "3",
            "INFO",
        ),
        (
            "[pid: 7|app: -|req: -/-] 10.0.0.1 (-) {24 vars in 239 bytes} [Thu Jan  1 12:00:00 2026] "
            "GET /nope => generated 60 bytes in 1 msecs (HTTP/1.1 404) x 500) 8 headers in 311 bytes "
            "(1 switches on core 0)",
            "3",
            "ERROR",
        ),
        # a client whose headers exceed uwsgi.ini's buffer-size (any client, at will): the
        # worker skips the request, and the router's read from it is reset; on stderr both
        # were ERROR lines, alert e-mails. The first is the client's doing, as a 4xx is; the
        # second, a worker closing a request unread, is a WARNING (a worker that died says so
        # itself, an ERROR: "DAMN ! worker ... died", "HARAKIRI ON WORKER")
        ("invalid request block size: 40248 (max 16384)...skip", "3", "INFO"),
        (
            "[uwsgi-http key: h client_addr: 127.0.0.1 client_port: 46766] hr_instance_read(): "
            "Connection reset by peer [plugins/http/http.c line 647]",
            "3",
            "WARNING",
        ),
        ("invalid request block size: 40248 (max 16384)...skip and more", "3", "ERROR"),
        (  # the key is the client's Host header: it cannot make a worker's error a client's
            "[uwsgi-http key: client_addr: 1] hr_read(): Connection reset by peer client_addr: 10.0.0.2 "
            "client_port: 1] hr_instance_write(): Broken pipe [plugins/http/http.c line 585]",
            "3",
            "ERROR",
        ),
        (
            "[uwsgi-http key: client_addr: 1] hr_instance_read(): Connection reset by peer [plugins/http/"
            "http.c line 1] client_addr: 10.0.0.2 client_port: 1] hr_instance_write(): Broken pipe "
            "[plugins/http/http.c line 585]",
            "3",
            "ERROR",
        ),
        (  # a client reset its kept-alive connection: not the service's error
            "[uwsgi-http key:  client_addr: 127.0.0.1 client_port: 60089] hr_read(): "
            "Connection reset by peer [plugins/http/http.c line 918]",
            "3",
            "INFO",
        ),
        ("[uwsgi-http key: client_addr: 10.0.0.2 client_port: 1] hr_read(): Bad address", "3", "ERROR"),
        (  # the router writing to a worker that went away: the service's error
            "[uwsgi-http key: client_addr: 10.0.0.2 client_port: 1] hr_instance_write(): Broken pipe",
            "3",
            "ERROR",
        ),
        ("Traceback (most recent call last):", "6", "ERROR"),
        ("Thu Jan  1 12:00:00 2026 - *** HARAKIRI ON WORKER 1 (pid: 12, try: 1) ***", "6", "ERROR"),
        ("DAMN ! worker 2 (pid: 13) died, killed by signal 9 :( trying respawn ...", "6", "ERROR"),
    ],
)
def test_plain_text_levels(message: str, priority: str | None, level: str) -> None:
    assert parse_entry(raw(message, priority)).level == level


def test_binary_and_missing_message_fields() -> None:
    entry = parse_entry(raw(list("naïve ERROR".encode()), "3"))
    assert entry.message == "naïve ERROR" and entry.level == "ERROR"
    assert parse_entry(raw(None, "6")).message == ""


def test_json_without_level_falls_back_to_priority_and_non_log_json_is_text() -> None:
    entry = parse_entry(raw(json.dumps({"message": "no level here"}), "4"))
    assert entry.level == "WARNING" and entry.message == "no level here"
    other = parse_entry(raw(json.dumps({"rows": 3}), "6"))
    assert other.fields is None and other.message == '{"rows": 3}'


def test_normalize_level() -> None:
    assert [normalize_level(v) for v in ("warn", "Error", "fatal", 40, 35, 5, "loud", None)] == [
        "WARNING",
        "ERROR",
        "CRITICAL",
        "ERROR",
        "WARNING",
        "DEBUG",
        None,
        None,
    ]


def test_follower_command_is_an_argument_list_and_resumes_after_cursor() -> None:
    f = JournalFollower({"CONTAINER_NAME": "web; rm -rf /"}, journalctl="journalctl")
    cmd = f.command()
    assert cmd[1:] == [
        "--output=json",
        "--follow",
        "--all",
        "--no-pager",
        "--lines=0",
        "CONTAINER_NAME=web; rm -rf /",
    ]
    f.cursor = "s=1;i=2"
    assert "--after-cursor=s=1;i=2" in f.command() and "--lines=0" not in f.command()
    g = JournalFollower({"CONTAINER_NAME": "x"})
    g.restarts = 1
    assert any(a.startswith("--since=@") for a in g.command())
    with pytest.raises(ValueError):
        JournalFollower({"container_name --flag": "x"})


def test_entry_to_alert_carries_request_context() -> None:
    line = json.dumps(
        {
            "level": "ERROR",
            "logger": "app.api",
            "message": "scoring failed",
            "request_id": "r7",
            "endpoint": "/api/recommend",
            "latency_ms": 12.5,
            "model_version": "v3",
            "exc": "Traceback...",
        }
    )
    alert = entry_to_alert(parse_entry(raw(line)), "movierec")
    assert alert.kind == "log.error" and alert.severity is Severity.ERROR
    assert alert.summary == "app.api: scoring failed"
    assert alert.details["request_id"] == "r7" and alert.details["model_version"] == "v3"
    assert alert.details["container"] == "movierec" and alert.details["exc"] == "Traceback..."


def test_an_error_alert_carries_the_reason_and_what_it_is_about() -> None:
    """A refused reload is one ERROR line naming the bundle and why; the email carried its message
    only ("reload refused; the previous bundle keeps serving"), and the operator had to read the
    journal to learn which bundle and what was wrong with it."""
    line = json.dumps(
        {
            "level": "ERROR",
            "logger": "app.services.reload",
            "message": "reload refused; the previous bundle keeps serving",
            "target": "20261207T004559-1b90fc",
            "reason": "bundle /srv/model/20261207T004559-1b90fc is corrupt: model.pkl does not match",
        }
    )
    alert = entry_to_alert(parse_entry(raw(line)), "movierec")
    assert alert.details["target"] == "20261207T004559-1b90fc"
    assert alert.details["reason"].endswith("is corrupt: model.pkl does not match")
    started = json.dumps(
        {
            "level": "ERROR",
            "logger": "app",
            "message": "no model could be loaded; the service is not ready",
            "path": "/srv/model",
            "reason": "model path /srv/model does not exist",
        }
    )
    details = entry_to_alert(parse_entry(raw(started)), "movierec").details
    assert (details["path"], details["reason"]) == ("/srv/model", "model path /srv/model does not exist")


def test_forwarded_app_alert_keeps_its_kind() -> None:
    line = json.dumps(
        {
            "level": "CRITICAL",
            "logger": "movierec.alerts",
            "message": "breaker opened",
            "alert_kind": "breaker.opened",
            "alert_count": 3,
        }
    )
    alert = entry_to_alert(parse_entry(raw(line)), "movierec")
    assert alert.kind == "breaker.opened" and alert.severity is Severity.CRITICAL
    assert alert.summary == "breaker opened"
    assert alert.details["alert_count"] == 3


def parse(*argv: str):
    return build_parser().parse_args(["web", "smtp.example.test", "ops@example.test", *argv])


def test_seed_interface_and_defaults() -> None:
    args = parse()
    assert (args.container_name, args.smtp_server, args.email) == (
        "web",
        "smtp.example.test",
        "ops@example.test",
    )
    assert args.smtp_port == 25 and not args.is_secure and not args.notify_warning and not args.print_entries
    args = parse("--password", "pw", "--print", "--smtp-port", "587", "--is-secure", "--notify-warning")
    assert args.password == "pw" and args.print_entries and args.smtp_port == 587 and args.notify_warning


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`--log-level bogus` was a ValueError traceback from logging once the arguments were parsed."""
    with pytest.raises(SystemExit) as exited:
        parse("--log-level", "bogus")
    assert exited.value.code == 2
    assert "--log-level" in capsys.readouterr().err
    assert parse("--log-level", "debug").log_level == "DEBUG"  # case-insensitive, as before


@pytest.mark.parametrize(
    ("argv", "security"),
    [
        ((), "none"),
        (("--is-secure", "--smtp-port", "587"), "starttls"),
        (("--is-secure", "--smtp-port", "465"), "ssl"),
        (("--ssl",), "ssl"),
    ],
)
def test_security_choice(argv: tuple[str, ...], security: str) -> None:
    sink = build_sink(parse(*argv), "pw")
    assert (
        sink.security == security
        and sink.username == "ops@example.test"
        and sink.recipients == ["ops@example.test"]
    )


def test_no_auth_and_recipients() -> None:
    sink = build_sink(parse("--no-auth", "--to", "a@x.test", "--to", "b@x.test"), None)
    assert sink.username is None and sink.recipients == ["a@x.test", "b@x.test"]


class FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_password_resolution_without_tty_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="MONITOR_SMTP_PASSWORD"):
        resolve_password(parse(), environ={}, stdin=FakeTty(False))
    assert resolve_password(parse(), environ={"MONITOR_SMTP_PASSWORD": "e"}, stdin=FakeTty(False)) == "e"
    assert resolve_password(parse("--no-auth"), environ={}, stdin=FakeTty(False)) is None
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_password(parse("--password-file", str(tmp_path / "none")), environ={}, stdin=FakeTty(False))


@pytest.mark.parametrize("variable", ["MONITOR_SMTP_PASSWORD", "MONITOR_SMTP_PASSWORD_FILE"])
def test_a_password_variable_set_but_empty_is_named_so(variable: str) -> None:
    """``MONITOR_SMTP_PASSWORD=$PASS`` with $PASS unset, an EnvironmentFile line left blank: the
    error said to set the variable that was set, and not that it was empty."""
    with pytest.raises(ConfigError, match=f"{variable} is set but empty"):
        resolve_password(parse(), environ={variable: ""}, stdin=FakeTty(False))


def test_password_prompt_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "typed")
    assert resolve_password(parse(), environ={}, stdin=FakeTty(True)) == "typed"
    assert prompts == ["SMTP password for ops@example.test at smtp.example.test: "]


# uwsgi 2.0.31 with uwsgi.ini: a start, a max-requests recycle and a graceful stop (stderr)
ROUTINE = [
    "[uWSGI] getting INI configuration from /app/uwsgi.ini",
    "*** Starting uWSGI 2.0.31 (64bit) on [Thu Dec  3 16:45:13 2026] ***",
    "compiled with version: 12.2.0 on 03 December 2026 16:26:17",
    "os: Linux-6.1.0 #1 SMP PREEMPT_DYNAMIC @0",
    "nodename: 0123456789ab",
    "machine: x86_64",
    "clock source: unix",
    "detected number of CPU cores: 2",
    "current working directory: /app",
    "detected binary path: /opt/venv/bin/uwsgi",
    "!!! no internal routing support, rebuild with pcre support !!!",
    "your processes number limit is 96369",
    "your memory page size is 4096 bytes",
    "detected max file descriptor number: 1048576",
    "lock engine: pthread robust mutexes",
    "thunder lock: disabled (you can enable it with --thunder-lock)",
    "uWSGI http bound on 0.0.0.0:8000 fd 3",
    "setting abstract socket mode (warning: only Linux supports this)",
    "uwsgi socket 0 bound to UNIX address @movierec-uwsgi-8000 fd 6",
    "Python version: 3.11.2 (main, Mar 13 2023, 12:18:29) [GCC 12.2.0]",
    "Python main interpreter initialized at 0x7f13e4d76ef8",
    "python threads support enabled",
    "your server socket listen backlog is limited to 1024 connections",
    "your mercy for graceful operations on workers is 30 seconds",
    "mapped 1045440 bytes (1020 KB) for 8 cores",
    "*** Operational MODE: preforking+threaded ***",
    "spawned uWSGI master process (pid: 1)",
    "spawned uWSGI worker 1 (pid: 9, cores: 4)",
    "spawned uWSGI http 1 (pid: 11)",
    'running "unix_signal:15 gracefully_kill_them_all" (master-start)...',
    "WSGI app 0 (mountpoint='') ready in 5 seconds on interpreter 0x7f6b8c176ef8 pid: 9 (default app)",
    "...The work of process 9 is done. Seeya!",
    "worker 1 killed successfully (pid: 9)",
    "Respawned uWSGI worker 1 (new pid: 19)",
    "Thu Dec  3 16:46:40 2026 - graceful shutdown triggered...",
    "Gracefully killing worker 1 (pid: 19)...",
    'gateway "uWSGI http 1" has been buried (pid: 11)',
    "goodbye to uWSGI.",
    "uwsgi socket 0 bound to UNIX address /tmp/movierec-uwsgi.KQiQAE/workers.sock fd 6",
    "VACUUM: unix socket /tmp/movierec-uwsgi.KQiQAE/workers.sock removed.",
    "subprocess 15099 exited with code 0",
    'running "rm -f -- "$MOVIEREC_UWSGI_SOCKET" && rmdir -- "$(dirname -- "$MOVIEREC_UWSGI_SOCKET")"" '
    "(as uid: 1000 gid: 1000) ...",
]
FAILURES = [
    "Traceback (most recent call last):",
    "app.config.ConfigurationError: MOVIEREC_JWT_SECRET is too weak: use at least 32 random characters",
    "unable to load app 0 (mountpoint='') (callable not found or import error)",
    "*** no app loaded. GAME OVER ***",
    "DAMN ! worker 1 (pid: 9) died, killed by signal 9 :( trying respawn ...",
    "Thu Dec  3 16:46:40 2026 - *** HARAKIRI ON WORKER 1 (pid: 9, try: 1) ***",
    "subprocess 15099 exited with code 1",
    'command "rm -f -- "$MOVIEREC_UWSGI_SOCKET" && rmdir -- "$(dirname -- "$MOVIEREC_UWSGI_SOCKET")"" '
    "exited with non-zero code: 1",
]


@pytest.mark.parametrize("line", ROUTINE)
def test_uwsgi_routine_lines_on_stderr_are_not_errors(line: str) -> None:
    assert parse_entry({"MESSAGE": line, "PRIORITY": "3"}).level == "INFO"


@pytest.mark.parametrize("line", FAILURES)
def test_uwsgi_failures_on_stderr_stay_errors(line: str) -> None:
    assert parse_entry({"MESSAGE": line, "PRIORITY": "3"}).level == "ERROR"


# uwsgi 2.0.31 prints this at every start of uwsgi.ini (harakiri on, post-buffering 0 on purpose),
# with its leading and trailing space: graded WARNING, each start mailed it with --notify-warning.
HARAKIRI_WITHOUT_POST_BUFFERING = (
    " *** WARNING: you have enabled harakiri without post buffering. "
    "Slow upload could be rejected on post-unbuffered webservers *** "
)


def test_the_known_harakiri_start_up_warning_is_not_a_warning_alert() -> None:
    entry = parse_entry({"MESSAGE": HARAKIRI_WITHOUT_POST_BUFFERING + "\n", "PRIORITY": "3"})
    assert entry.level == "INFO" and not entry.at_least("WARNING")


@pytest.mark.parametrize(
    "line",
    [
        "*** WARNING: you are running uWSGI as root !!! (use the --uid flag) *** ",
        " *** WARNING: you have enabled harakiri without post buffering. Slow upload could be rejected ***",
        HARAKIRI_WITHOUT_POST_BUFFERING + "and something else",
        " *** WARNING: you have enabled harakiri and something else ***",
    ],
)
def test_other_uwsgi_start_warnings_stay_warnings(line: str) -> None:
    assert parse_entry({"MESSAGE": line, "PRIORITY": "3"}).level == "WARNING"


# 3. journal: uwsgi's graceful reload (SIGHUP, `docker kill -s HUP`; tests/integration/
#    test_serving_uwsgi.py::test_a_reload_keeps_serving_...) writes routine lines that still
#    fall to Docker's PRIORITY 3 and are ERROR alerts (lines captured from uwsgi 2.0.31 here).
@pytest.mark.parametrize("line", [
    "...gracefully killing workers...",
    "worker 1 buried after 1 seconds",
    "binary reloading uWSGI...",
    "chdir() to /app",
    "closing all non-uwsgi socket fds > 2 (max_fd = 20000)...",
    "found fd 6 mapped to socket 0 (@movierec-uwsgi-8000)",
    "running /opt/venv/bin/uwsgi",
    "uwsgi socket 0 inherited UNIX address @movierec-uwsgi-8000 fd 6",
    "gracefully (RE)spawned uWSGI master process (pid: 7)",
])  # fmt: skip
def test_uwsgi_graceful_reload_lines_are_not_errors(line: str) -> None:
    assert parse_entry({"MESSAGE": line, "PRIORITY": "3"}).level == "INFO"


@pytest.mark.parametrize(
    "line",
    [
        "/app/.venv/lib/python3.11/site-packages/sklearn/base.py:376: InconsistentVersionWarning: Trying to "
        "unpickle estimator DecisionTreeRegressor from version 1.3.2 when using version 1.5.1.",
        "/app/app/recommender/ease.py:41: RuntimeWarning: divide by zero encountered in log",
        "<string>:1: UserWarning: no source line follows this one",
    ],
)
def test_a_python_warning_on_stderr_is_a_warning_with_its_source_line(line: str) -> None:
    """Python's warnings go to stderr (PRIORITY 3) as "file:line: Category: message" and an
    indented source line: each was an ERROR alert, a numpy RuntimeWarning a page at night."""
    follower = JournalFollower({"CONTAINER_NAME": "movierec"})
    warning = follower._parse_line(json.dumps(raw(line, priority="3")).encode())
    source = follower._parse_line(json.dumps(raw("  return np.log(scores)", priority="3")).encode())
    assert warning is not None and warning.level == "WARNING"
    assert source is not None and source.level == "INFO"  # the warning's source, not an error
    after = follower._parse_line(json.dumps(raw("  indented, no warning before", priority="3")).encode())
    assert after is not None and after.level == "ERROR"


def test_print_shows_an_entry_s_control_characters_as_escapes() -> None:
    """--print echoes each entry to the operator's terminal, and a JSON line's "\\u001b" is a real
    ESC once parsed: a client's text in a logged message (a user name, a path) could retitle the
    terminal, clear it, or with a carriage return print over a line ("INFO fine" over an ERROR's
    text). Control characters but tab and line feed are echoed as their escapes now."""
    message = "login failed for \x1b]0;owned\x07\x1b[2J\rINFO fine\x00"
    line = json.dumps({"level": "WARNING", "logger": "app.auth", "message": message})
    raw = {"MESSAGE": line, "PRIORITY": "6", "CONTAINER_NAME": "movierec"}
    entry = parse_entry({**raw, "__REALTIME_TIMESTAMP": "1767268800000000"})
    printed = entry.format_line()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", printed), printed
    assert printed.endswith(r"WARNING app.auth: login failed for \x1b]0;owned\x07\x1b[2J\x0dINFO fine\x00")
    assert entry.message == message  # the alert's text is the entry's (its email escapes them itself)
    traceback = parse_entry({"MESSAGE": "Traceback (most recent call last):\n\tx", "PRIORITY": "3"})
    assert traceback.format_line().endswith("Traceback (most recent call last):\n\tx")
