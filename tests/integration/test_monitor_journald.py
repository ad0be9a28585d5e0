"""The container monitor against a real journald and a real SMTP server (aiosmtpd).

journald: the running one, or one started here as root (tests that need it skip with the
reason when neither works). Entries carry a CONTAINER_NAME unique to each test, like the
Docker journald driver writes them. ``monitor-docker.py`` runs as a real subprocess with
the password in its environment, never on its command line.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import logging
import os
import queue
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from app.monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    Alerter,
    Notification,
    SmtpAuthError,
    SmtpClientCertificateRequired,
    SmtpConnectionError,
    SmtpSink,
)
from app.monitoring.journal import JournalFollower
from tests.helpers import free_port, hang_up_at_default_in_children
from tests.integration.journald import (
    Journald,
    JournaldUnavailable,
    journal_read,
    start_journald,
    stop_journald,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
USER = "alerts@movierec.test"
PASSWORD = "correct horse battery staple"
ARRIVAL_SECONDS = 60.0
"""How long a test waits for what will come (an email, an entry, a monitor's start): a bound for
when it never does, not a speed under test; a loaded CI machine only takes longer."""


# --------------------------------------------------------------------------- SMTP server
class RecordingHandler:
    def __init__(self) -> None:
        self.messages: queue.Queue[EmailMessage] = queue.Queue()
        self.received: list[EmailMessage] = []
        self.envelope_recipients: list[list[str]] = []  # RCPT TO of each received message

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(
            envelope.original_content or envelope.content, policy=email.policy.default
        )
        self.envelope_recipients.append(list(envelope.rcpt_tos))
        self.received.append(msg)
        self.messages.put(msg)
        return "250 OK"


class Authenticator:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, bool]] = []
        self.reply: str | None = None  # a refusal other than aiosmtpd's 535, e.g. a 454

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD
        )
        self.attempts.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok))
        if self.reply is not None:
            return AuthResult(success=False, handled=False, message=self.reply)
        return AuthResult(success=ok, handled=False)


class RefusingHandler(RecordingHandler):
    """Answers MAIL FROM, RCPT TO or DATA with ``refusals[command]`` while it is set, and RCPT TO
    one address with ``refused_recipients[address]``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals: dict[str, str] = {}
        self.refused_recipients: dict[str, str] = {}

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if "MAIL" in self.refusals:
            return self.refusals["MAIL"]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "RCPT" in self.refusals:
            return self.refusals["RCPT"]
        if address in self.refused_recipients:
            return self.refused_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if "DATA" in self.refusals:
            return self.refusals["DATA"]
        return await super().handle_DATA(server, session, envelope)


class SmtpServer:
    def __init__(self, controller: Controller, handler: RecordingHandler, auth: Authenticator) -> None:
        self.controller = controller
        self.handler = handler
        self.auth = auth
        self.port: int = controller.port

    def wait_for(self, count: int, timeout: float) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.handler.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.handler.received)


def start_smtp(handler: RecordingHandler | None = None, **kwargs: object) -> SmtpServer:
    handler, auth = handler or RecordingHandler(), Authenticator()
    kwargs.setdefault("auth_require_tls", False)
    controller = Controller(
        handler, hostname="127.0.0.1", port=free_port(), authenticator=auth, auth_required=True, **kwargs
    )
    controller.start()
    return SmtpServer(controller, handler, auth)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _note(summary: str = "boom") -> Notification:
    captured: list[Notification] = []

    class Capture:
        name = "capture"

        def send(self, n: Notification) -> None:
            captured.append(n)

    alerter = Alerter([Capture()], group_wait=60)
    alerter.raise_alert(Alert("log.error", "error", summary, {"request_id": "r-1"}))
    alerter.flush()
    return captured[0]


def _sink(port: int, **options: Any) -> SmtpSink:
    """A sink to the test server on ``port``: from and to USER, logging in with PASSWORD."""
    settings: dict[str, Any] = {"sender": USER, "recipients": [USER], "username": USER, "password": PASSWORD}
    return SmtpSink("127.0.0.1", port, **{**settings, "timeout": 5, **options})


# ------------------------------------------------------------------------- SmtpSink tests
def test_smtp_sink_plain_login_delivers_message(smtp_server: SmtpServer) -> None:
    sink = _sink(smtp_server.port)
    sink.send(_note("database unreachable"))
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert "database unreachable" in msg["Subject"]
    assert msg["X-Movierec-Alert-Kind"] == "log.error"
    assert "request_id: r-1" in msg.get_content()
    assert smtp_server.auth.attempts == [(USER, True)]


def test_smtp_sink_bad_password_names_server_and_user_not_password(smtp_server: SmtpServer) -> None:
    sink = _sink(smtp_server.port, password="wrong-secret-value")
    with pytest.raises(SmtpAuthError) as info:
        sink.verify()
    text = str(info.value)
    assert f"127.0.0.1:{smtp_server.port}" in text and USER in text and "535" in text
    assert "wrong-secret-value" not in text and "wrong-secret-value" not in repr(sink)
    assert info.value.retryable is False
    assert smtp_server.wait_for(1, 0.2) == []


def test_smtp_sink_unreachable_server_is_retryable_connection_error() -> None:
    sink = SmtpSink("127.0.0.1", free_port(), sender=USER, recipients=[USER], timeout=2)
    with pytest.raises(SmtpConnectionError) as info:
        sink.verify()
    assert info.value.retryable is True


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL", "421 4.7.0 Too many messages, slow down"),
        ("RCPT", "450 4.2.0 Greylisted, try again later"),
        ("DATA", "451 4.3.0 Local error in processing"),
    ],
)
def test_a_temporary_refusal_is_retried_until_the_server_accepts(command: str, reply: str) -> None:
    """A 4xx answer means "try again later" (RFC 5321): a greylisting or rate-limiting relay. To
    MAIL FROM or RCPT TO it was a permanent failure, the digest dropped at the first try; to DATA,
    it was given up after max_attempts (90 s), shorter than a greylisting delay."""
    handler = RefusingHandler()
    handler.refusals[command] = reply
    server = start_smtp(handler)
    try:
        sink = _sink(server.port)
        with pytest.raises(SmtpConnectionError, match=reply.split()[0]) as info:
            sink.send(_note("database unreachable"))
        assert info.value.retryable
        alerter = Alerter([sink], group_wait=0, retry_delay=0, max_attempts=1)
        alerter.raise_alert(Alert("log.error", "error", "database unreachable"))
        alerter.flush_due()
        alerter.flush_due()  # still refused: kept, past max_attempts
        assert alerter.oldest_undelivered() == 1
        del handler.refusals[command]
        alerter.flush_due()
        [msg] = server.wait_for(1, ARRIVAL_SECONDS)
        assert "database unreachable" in msg["Subject"] and alerter.oldest_undelivered() is None
    finally:
        server.controller.stop()


def test_a_permanent_refusal_is_not_retried() -> None:
    handler = RefusingHandler()
    handler.refusals["RCPT"] = "550 5.1.1 No such user"
    server = start_smtp(handler)
    try:
        sink = _sink(server.port)
        with pytest.raises(AlertDeliveryError, match="refused recipients") as info:
            sink.send(_note())
        assert not info.value.retryable and not isinstance(info.value, SmtpConnectionError)
    finally:
        server.controller.stop()


OTHER = "oncall@movierec.test"


@contextlib.contextmanager
def _one_recipient_refused(
    reply: str, caplog: pytest.LogCaptureFixture, **alerter_options: Any
) -> Iterator[tuple[RefusingHandler, SmtpServer, Alerter, logging.LogRecord, str]]:
    """An alert sent to USER and OTHER through a real server that refuses OTHER with ``reply``:
    the handler, server and alerter, and the one warning the alerts module logged (its text with
    its extra fields). USER got it."""
    handler = RefusingHandler()
    handler.refused_recipients[OTHER] = reply
    server = start_smtp(handler)
    try:
        sink = _sink(server.port, recipients=[USER, OTHER])
        alerter = Alerter([sink], group_wait=0, retry_delay=0, **alerter_options)
        with caplog.at_level("WARNING", logger="app.monitoring.alerts"):
            alerter.raise_alert(Alert("log.error", "error", "database unreachable"))
            alerter.flush_due()
        assert server.wait_for(1, ARRIVAL_SECONDS) and handler.envelope_recipients == [[USER]]
        [record] = [
            r for r in caplog.records if r.name == "app.monitoring.alerts" and r.levelname == "WARNING"
        ]
        yield handler, server, alerter, record, f"{record.getMessage()} {record.__dict__}"
    finally:
        server.controller.stop()


def test_a_permanent_refusal_of_some_recipients_is_a_warning_naming_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """smtplib returns the refused recipients when it delivered to the others: the digest counted
    as delivered to everyone, and nobody learnt that an address had stopped receiving alerts."""
    with _one_recipient_refused("550 5.1.1 No such user", caplog) as (
        handler,
        _server,
        alerter,
        record,
        text,
    ):
        assert OTHER in text and "550 5.1.1 No such user" in text and PASSWORD not in text
        assert not record.will_retry
        alerter.flush_due()  # not retried: the refusal was permanent
        assert handler.envelope_recipients == [[USER]] and alerter.oldest_undelivered() is None


def test_a_temporary_refusal_of_some_recipients_retries_only_them(caplog: pytest.LogCaptureFixture) -> None:
    greylisted = "450 4.2.0 Greylisted, try again later"
    with _one_recipient_refused(greylisted, caplog, max_attempts=1) as (
        handler,
        server,
        alerter,
        record,
        text,
    ):
        assert OTHER in text and "450 4.2.0 Greylisted" in text and PASSWORD not in text
        assert record.will_retry
        alerter.flush_due()  # still greylisted: kept, past max_attempts, and USER not sent it again
        assert handler.envelope_recipients == [[USER]] and alerter.oldest_undelivered() == 1
        del handler.refused_recipients[OTHER]
        alerter.flush_due()
        server.wait_for(2, ARRIVAL_SECONDS)
        assert handler.envelope_recipients == [[USER], [OTHER]] and alerter.oldest_undelivered() is None
        assert "database unreachable" in handler.received[1]["Subject"]


def test_a_temporary_login_failure_is_not_a_configuration_error(smtp_server: SmtpServer) -> None:
    """454 (Gmail's "Too many login attempts, please try again later") is temporary: it was an
    SmtpAuthError, so the monitor exited 2 at start, which its unit does not restart."""
    smtp_server.auth.reply = "454 4.7.0 Too many login attempts, please try again later"
    sink = _sink(smtp_server.port)
    with pytest.raises(SmtpConnectionError, match="454") as info:
        sink.verify()
    assert not isinstance(info.value, SmtpAuthError) and info.value.retryable
    assert PASSWORD not in str(info.value)


def test_smtp_sink_starttls_with_verified_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server = start_smtp(
        tls_context=server_tls_context(cert, key), require_starttls=True, auth_require_tls=True
    )
    try:
        sink = _sink(
            server.port, security="starttls", ssl_context=ssl.create_default_context(cafile=str(cert))
        )
        sink.send(_note("over starttls"))
        [msg] = server.wait_for(1, ARRIVAL_SECONDS)
        assert "over starttls" in msg["Subject"]
        # Without STARTTLS this server offers no AUTH: a plain login attempt must fail clearly.
        plain = _sink(server.port)
        with pytest.raises(AlertDeliveryError, match=r"STARTTLS|AUTH"):
            plain.verify()
        # An untrusted certificate is refused, not silently accepted.
        untrusting = _sink(server.port, security="starttls")
        with pytest.raises(AlertDeliveryError, match="TLS"):
            untrusting.verify()
    finally:
        server.controller.stop()


def test_smtp_sink_implicit_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    # aiosmtpd only counts STARTTLS as TLS for auth_require_tls; this connection is TLS from the start.
    server = start_smtp(ssl_context=server_tls_context(cert, key), auth_require_tls=False)
    try:
        sink = _sink(server.port, security="ssl", ssl_context=ssl.create_default_context(cafile=str(cert)))
        sink.send(_note("over smtps"))
        [msg] = server.wait_for(1, ARRIVAL_SECONDS)
        assert "over smtps" in msg["Subject"]
        assert server.auth.attempts == [(USER, True)]
    finally:
        server.controller.stop()


@contextlib.contextmanager
def _scripted_server(handle: Callable[[socket.socket, Any], None]) -> Iterator[int]:
    """A port whose server hands each connection (the socket, and a binary reader of it) to
    ``handle``, then closes it; a connection's socket errors end that connection only."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn, conn.makefile("rb") as reader, contextlib.suppress(OSError):
                handle(conn, reader)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()


def _up_to_starttls(conn: socket.socket, reader: Any) -> None:
    """A server's side of a session up to its "220" to STARTTLS, where the TLS handshake begins."""
    conn.sendall(b"220 relay ESMTP\r\n")
    reader.readline()  # EHLO
    conn.sendall(b"250-relay\r\n250 STARTTLS\r\n")
    reader.readline()  # STARTTLS
    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")


@contextlib.contextmanager
def _server_dropping_tls(security: str) -> Iterator[int]:
    """A port whose server drops each connection where its TLS handshake would begin: at once for
    implicit TLS, after its "220" to STARTTLS otherwise (a relay restarting, overloaded, cut off)."""

    def handle(conn: socket.socket, reader: Any) -> None:
        if security == "starttls":
            _up_to_starttls(conn, reader)

    with _scripted_server(handle) as port:
        yield port


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_a_connection_dropped_during_the_tls_handshake_is_retried_not_a_configuration_error(
    security: str,
) -> None:
    """A server that closes the connection where TLS begins is the "dropped the connection" it is
    without TLS (retried; exit 75 at start). It was "TLS ... failed", not retryable: exit 2 at
    start, which the unit does not restart, and at run time each alert dropped at its first try."""
    with _server_dropping_tls(security) as port:
        sink = _sink(port, security=security)
        with pytest.raises(SmtpConnectionError) as info:
            sink.verify()
        assert info.value.retryable and f"127.0.0.1:{port}" in str(info.value)
        assert not isinstance(info.value, SmtpClientCertificateRequired)  # it asked for none
        with pytest.raises(SmtpConnectionError):
            sink.send(_note())


@contextlib.contextmanager
def _server_requiring_a_client_certificate(
    tls_files: tuple[Path, Path], security: str, version: ssl.TLSVersion, *, alert: bool
) -> Iterator[int]:
    """A port whose server requires a TLS client certificate (its handshake asks for one), and
    when none comes closes the connection: with the TLS alert that says why when ``alert``, else
    without a word (the alert OpenSSL wrote is not sent), as some servers and proxies do."""
    cert, key = tls_files
    context = server_tls_context(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cert)
    context.maximum_version = version

    def handshake(conn: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                raise AssertionError("a handshake without a client certificate succeeded")
            except ssl.SSLWantReadError:
                conn.sendall(outgoing.read())
                data = conn.recv(1 << 16)
                if not data:
                    return
                incoming.write(data)
            except ssl.SSLError:
                if alert:
                    conn.sendall(outgoing.read())
                return

    def handle(conn: socket.socket, reader: Any) -> None:
        if security == "starttls":
            _up_to_starttls(conn, reader)
        handshake(conn)

    with _scripted_server(handle) as port:
        yield port


@pytest.mark.parametrize("alert", [False, True], ids=["closed", "alert"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_a_server_that_requires_a_client_certificate_is_named_so(
    tls_files: tuple[Path, Path], security: str, version: ssl.TLSVersion, alert: bool
) -> None:
    """A server that requires a client certificate (the monitor sends none) and closes the
    connection without one looked like a server going away: "closed the connection during the TLS
    handshake", or under TLS 1.3 (the client's handshake is over before the server checks it),
    "Connection unexpectedly closed", even with the TLS alert "certificate required": retried,
    exit 75 at start, restarted every 10 s for ever. Its handshake asks for a certificate
    (CertificateRequest): that is what the error says now."""
    cert, _key = tls_files
    with _server_requiring_a_client_certificate(tls_files, security, version, alert=alert) as port:
        sink = _sink(port, security=security, ssl_context=ssl.create_default_context(cafile=str(cert)))
        with pytest.raises(SmtpClientCertificateRequired) as info:
            sink.verify()
    text = str(info.value)
    assert f"127.0.0.1:{port}" in text and "client certificate" in text, text
    assert PASSWORD not in text


@pytest.mark.parametrize(("security", "version"), [("ssl", "TLSv1_3"), ("starttls", "TLSv1_2")])
def test_a_server_that_requires_a_client_certificate_is_exit_2_at_start(
    tls_files: tuple[Path, Path], security: str, version: str
) -> None:
    """... and the monitor's start-up check ends with exit 2 (a configuration to change, which the
    unit does not restart) once each of its tries was refused so, instead of exit 75."""
    cert, _key = tls_files
    with _server_requiring_a_client_certificate(
        tls_files, security, ssl.TLSVersion[version], alert=False
    ) as port:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_SMTP")}
        env["MONITOR_SMTP_PASSWORD"] = PASSWORD
        options = ["--ssl"] if security == "ssl" else ["--is-secure"]
        done = subprocess.run(
            [sys.executable, str(REPO / "monitor-docker.py"), "movierec-none", "127.0.0.1", USER,
             "--smtp-port", str(port), *options, "--smtp-cafile", str(cert), "--journalctl", "true"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "client certificate" in done.stderr and "try again later" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_that_asks_for_a_client_certificate_but_does_without_takes_the_alerts(
    tls_files: tuple[Path, Path],
) -> None:
    """A server that asks for a certificate but takes a connection without one (optional) is no
    error: the request alone does not make one."""
    cert, key = tls_files
    context = server_tls_context(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cert)
    server = start_smtp(ssl_context=context, auth_require_tls=False)
    try:
        sink = _sink(server.port, security="ssl", ssl_context=ssl.create_default_context(cafile=str(cert)))
        sink.verify()
        sink.send(_note("asked, not required"))
        [msg] = server.wait_for(1, ARRIVAL_SECONDS)
        assert "asked, not required" in msg["Subject"]
    finally:
        server.controller.stop()


# ------------------------------------------------------------------------------ journald
@pytest.fixture(scope="module")
def journald() -> Iterator[Journald]:
    try:
        handle = start_journald()
    except JournaldUnavailable as exc:
        pytest.skip(f"journald unavailable: {exc}")
    yield handle
    stop_journald(handle)


@pytest.fixture
def container() -> str:
    return f"movierec-test-{uuid.uuid4().hex[:12]}"


def app_line(level: str, message: str, **fields: object) -> str:
    """A log line as app.monitoring.logs writes it."""
    return json.dumps(
        {
            "ts": "2026-01-01T00:00:00.000+00:00",
            "level": level,
            "logger": "app.api",
            "message": message,
            **fields,
        }
    )


def _following(
    follower: JournalFollower, journald: Journald, container: str
) -> tuple[list, threading.Thread]:
    """Entries ``follower`` yields, collected by a thread, once a "ready" entry came through."""
    got: list = []

    def consume() -> None:
        for entry in follower.follow(idle=0.2):
            if entry is not None:
                got.append(entry)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not any(e.message == "ready" for e in got) and time.monotonic() < deadline:
        journald.send("ready", CONTAINER_NAME=container)
        time.sleep(0.3)
    assert any(e.message == "ready" for e in got), "journalctl -f never delivered an entry"
    return got, thread


def test_follower_parses_real_entries_and_stops(journald: Journald, container: str) -> None:
    follower = JournalFollower({"CONTAINER_NAME": container})
    got, thread = _following(follower, journald, container)
    journald.send(
        app_line("ERROR", "scoring failed", request_id="rq-9"), priority=6, CONTAINER_NAME=container
    )
    journald.send("disk almost full", priority=4, CONTAINER_NAME=container)
    journald.send("Traceback (most recent call last):\n  File x", priority=3, CONTAINER_NAME=container)
    journald.send("not ours", priority=3, CONTAINER_NAME=container + "-other")
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while len(got) < 4 + sum(e.message == "ready" for e in got) - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    follower.stop()
    thread.join(timeout=5)
    assert not thread.is_alive(), "follower did not stop"
    rest = [e for e in got if e.message != "ready"]
    assert [e.level for e in rest] == ["ERROR", "WARNING", "ERROR"]
    assert rest[0].fields is not None and rest[0].fields["request_id"] == "rq-9" and rest[0].priority == 6
    assert rest[0].logger == "app.api" and rest[0].message == "scoring failed"
    assert rest[1].fields is None and rest[1].priority == 4
    assert rest[2].message.startswith("Traceback") and "\n" in rest[2].message
    assert all(e.container_name == container for e in got)


class MonitorProcess:
    """monitor-docker.py as a subprocess, its stdout (--print) collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], launcher: Sequence[str] = ()) -> None:
        with hang_up_at_default_in_children():  # a terminal's SIGHUP, also in a test run under nohup
            self.proc = subprocess.Popen(
                [*launcher, sys.executable, str(REPO / "monitor-docker.py"), *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        self.lines: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True).start()

    @staticmethod
    def _pump(stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_ready(self, journald: Journald, container: str, timeout: float = ARRIVAL_SECONDS) -> None:
        """Write INFO canaries until the monitor echoes one: journalctl is then following."""
        deadline = time.monotonic() + timeout
        token = f"canary-{uuid.uuid4().hex[:8]}"
        sent = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"monitor exited {self.proc.returncode}: {''.join(self.stderr)}")
            sent += 1
            journald.send(f"{token}-{sent}", priority=6, CONTAINER_NAME=container)
            time.sleep(0.25)
            if any(token in line for line in self.lines):
                return
        raise AssertionError(f"monitor never echoed a canary; stderr: {''.join(self.stderr)[-2000:]}")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def monitor_factory(smtp_server: SmtpServer, container: str) -> Iterator:
    started: list[MonitorProcess] = []

    def start(
        *extra: str,
        password: str | None = PASSWORD,
        env_extra: dict[str, str] | None = None,
        group_wait: float = 1.0,
        launcher: Sequence[str] = (),
    ) -> MonitorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_SMTP")}
        if password is not None:
            env["MONITOR_SMTP_PASSWORD"] = password
        env.update(env_extra or {})
        args = [
            container,
            "127.0.0.1",
            USER,
            "--smtp-port",
            str(smtp_server.port),
            "--print",
            "--group-wait",
            str(group_wait),
            "--window",
            "30",
            "--smtp-timeout",
            "5",
            *extra,
        ]
        proc = MonitorProcess(args, env, launcher)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_error_entry_emails_the_entry(journald, container, smtp_server, monitor_factory) -> None:
    monitor = monitor_factory()
    monitor.wait_ready(journald, container)
    journald.send(
        app_line(
            "ERROR",
            "model scoring failed for user 17",
            request_id="req-abc",
            endpoint="/api/recommend",
            model_version="v3",
        ),
        CONTAINER_NAME=container,
    )
    messages = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    # what the monitor printed (each entry it read) tells a lost entry from a lost email
    assert len(messages) == 1, {"stdout": monitor.lines[-5:], "stderr": monitor.stderr}
    msg = messages[0]
    body = msg.get_content()
    assert msg["Subject"].startswith(f"[movierec {container}] ERROR")
    assert "app.api: model scoring failed for user 17" in body
    assert (
        "request_id: req-abc" in body and "endpoint: /api/recommend" in body and "model_version: v3" in body
    )
    assert f"container: {container}" in body
    assert msg["To"] == USER and msg["From"] == USER
    # The password never appears in the monitor's argv, output or logs.
    assert PASSWORD not in " ".join(monitor.proc.args)
    assert monitor.stop() == 0
    assert PASSWORD not in "".join(monitor.lines + monitor.stderr)
    assert any("model scoring failed" in line for line in monitor.lines)  # --print echoed it


def test_warning_emails_only_with_notify_warning(journald, container, smtp_server, monitor_factory) -> None:
    quiet = monitor_factory("--to", "errors-only@movierec.test")
    loud = monitor_factory("--to", "with-warnings@movierec.test", "--notify-warning")
    quiet.wait_ready(journald, container)
    loud.wait_ready(journald, container)
    warnings = ("latency above budget", "plain warning from stderr-less tool")
    journald.send(app_line("WARNING", warnings[0]), CONTAINER_NAME=container)
    journald.send(warnings[1], priority=4, CONTAINER_NAME=container)
    # Both reach the loud monitor: in one email, or in two when journalctl was slow to hand over
    # the second (CI saw it arrive after the group wait; the follower replaces a journalctl that
    # stays silent for 10 s). Grouping itself is test_burst_of_identical_errors_sends_one_email's.
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not all(any(w in m.get_content() for m in smtp_server.handler.received) for w in warnings):
        assert time.monotonic() < deadline, [m.get_content() for m in smtp_server.handler.received]
        time.sleep(0.05)
    time.sleep(2.5)  # > group-wait: the quiet monitor would have sent by now if it were going to
    messages = smtp_server.handler.received
    assert {m["To"] for m in messages} == {"with-warnings@movierec.test"}, [m["Subject"] for m in messages]
    assert all("WARNING" in m["Subject"] for m in messages)
    occurrences = [re.search(r"Occurrences: (\d+)", m.get_content()) for m in messages]
    assert sum(int(found[1]) for found in occurrences if found) == 2, [m.get_content() for m in messages]
    sent = len(messages)
    # An ERROR reaches both.
    journald.send(app_line("ERROR", "now it is broken"), CONTAINER_NAME=container)
    messages = smtp_server.wait_for(sent + 2, ARRIVAL_SECONDS)
    errors = [m for m in messages if "now it is broken" in m.get_content()]
    assert sorted(m["To"] for m in errors) == ["errors-only@movierec.test", "with-warnings@movierec.test"]


def test_burst_of_identical_errors_sends_one_email(
    journald, container, smtp_server, monitor_factory, tmp_path: Path
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    monitor = monitor_factory("--password-file", str(secret), password=None, group_wait=3.0)
    monitor.wait_ready(journald, container)
    n = 300
    for i in range(n):
        journald.send(
            app_line("ERROR", f"upstream timeout after {1000 + i} ms", request_id=f"req-{i}"),
            CONTAINER_NAME=container,
        )
    messages = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    time.sleep(2.0)  # nothing else may follow
    assert monitor.stop() == 0  # shutdown flushes pending groups: there must be none
    messages = smtp_server.handler.received
    assert len(messages) == 1, [m["Subject"] for m in messages]
    msg = messages[0]
    assert msg["X-Movierec-Alert-Count"] == str(n)
    assert f"{n} x" in msg["Subject"]
    body = msg.get_content()
    assert f"Occurrences: {n}" in body and f"[{n} x] app.api: upstream timeout after 1000 ms" in body
    assert "Distinct:    1" in body
    assert smtp_server.auth.attempts == [(USER, True), (USER, True)]  # start-up check + one email


def test_bad_password_exits_2_with_clear_error_and_no_retry_loop(
    container, smtp_server, monitor_factory
) -> None:
    monitor = monitor_factory(password="not-the-password")
    code = monitor.proc.wait(timeout=20)
    err = "".join(monitor.stderr)
    assert code == 2
    assert f"rejected the login for user '{USER}'" in err and f"127.0.0.1:{smtp_server.port}" in err
    assert "not-the-password" not in err and "Traceback" not in err
    # One login (smtplib tries PLAIN then LOGIN inside it), then the process is gone: no loop.
    assert 1 <= len(smtp_server.auth.attempts) <= 2
    assert all(user == USER and not ok for user, ok in smtp_server.auth.attempts)
    assert smtp_server.handler.received == []


def test_no_password_source_without_tty_is_a_clear_error(container, smtp_server, monitor_factory) -> None:
    monitor = monitor_factory(password=None)
    assert monitor.proc.wait(timeout=20) == 2
    err = "".join(monitor.stderr)
    assert "no SMTP password" in err and "MONITOR_SMTP_PASSWORD" in err
    assert smtp_server.auth.attempts == []


def test_a_silent_journalctl_is_replaced_and_resumes_after_the_cursor(
    journald: Journald, container: str
) -> None:
    follower = JournalFollower({"CONTAINER_NAME": container}, refresh_after=1.0)
    got, thread = _following(follower, journald, container)
    journald.send("before", CONTAINER_NAME=container)
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while follower.refreshes < 2 and time.monotonic() < deadline:  # silent: replaced, twice
        time.sleep(0.1)
    journald.send("after", CONTAINER_NAME=container)
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not any(e.message == "after" for e in got) and time.monotonic() < deadline:
        time.sleep(0.05)
    follower.stop()
    thread.join(timeout=5)
    assert follower.refreshes >= 2 and follower.restarts == 0
    rest = [e.message for e in got if e.message != "ready"]
    assert rest == ["before", "after"], got  # nothing lost, nothing replayed


def test_survives_journalctl_restart_without_losing_entries(
    journald, container, smtp_server, monitor_factory
) -> None:
    monitor = monitor_factory()
    monitor.wait_ready(journald, container)
    [child] = [pid for pid in monitor.children() if "journalctl" in Path(f"/proc/{pid}/cmdline").read_text()]
    os.kill(child, signal.SIGKILL)
    # Written while no journalctl runs: the restarted one resumes after the last cursor.
    journald.send(app_line("ERROR", "written during the gap"), CONTAINER_NAME=container)
    messages = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert len(messages) == 1 and "written during the gap" in messages[0].get_content()
    new_children = monitor.children()
    assert new_children and child not in new_children
    assert sum("journalctl exited; restarting" in line for line in monitor.stderr) == 1
    # Resumed after the cursor: nothing replayed twice (a restart from "since start" would).
    echoed = [line.split(f" {container} ", 1)[1] for line in monitor.lines if f" {container} " in line]
    assert len(echoed) == len(set(echoed)), echoed
    assert sum("written during the gap" in line for line in echoed) == 1


def test_alert_raised_inside_the_service_reaches_email_under_its_kind(
    journald, container, smtp_server, monitor_factory
) -> None:
    """Service: Alerter + LoggingSink -> JSON line on stdout -> journald -> monitor -> email."""
    import io
    import logging

    from app.monitoring.alerts import LoggingSink
    from app.monitoring.logs import JsonFormatter

    stdout = io.StringIO()
    handler = logging.StreamHandler(stdout)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"movierec.alerts.{container}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    in_app = Alerter([LoggingSink(logger)], group_wait=60)
    for failures in (5, 6, 7):
        in_app.raise_alert(Alert("breaker.opened", "critical", f"breaker opened after {failures} failures"))
    in_app.close()

    monitor = monitor_factory()
    monitor.wait_ready(journald, container)
    for line in stdout.getvalue().splitlines():  # what Docker's driver would write, PRIORITY 6
        journald.send(line, priority=6, CONTAINER_NAME=container)
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert msg["X-Movierec-Alert-Kind"] == "breaker.opened"
    assert (
        msg["Subject"].startswith(f"[movierec {container}] CRITICAL")
        and "breaker opened after 5" in msg["Subject"]
    )
    assert "alert_count: 3" in msg.get_content()


def test_a_line_with_a_lone_surrogate_escape_does_not_lose_its_digest(smtp_server: SmtpServer) -> None:
    """JSON log lines may carry "\\udcff" (json.dumps with ensure_ascii of a surrogate-escaped
    file name or argument): email could not encode it, and the whole digest of that kind, every
    other error in it included, failed three times and was dropped."""
    from app.monitoring.journal import parse_entry
    from app.monitoring.monitor import entry_to_alert

    sink = _sink(smtp_server.port)
    alerter = Alerter([sink], group_wait=60, retry_delay=0)
    for message in ("cannot open /data/\\udcff.csv", "database unreachable"):
        line = json.dumps({"level": "ERROR", "logger": "app", "message": "MARK"}).replace("MARK", message)
        entry = parse_entry({"MESSAGE": line, "PRIORITY": "6", "__REALTIME_TIMESTAMP": "1767268800000000"})
        alerter.raise_alert(entry_to_alert(entry, "movierec"))
    for _ in range(3):
        alerter.flush()
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    body = msg.get_content()
    assert "database unreachable" in body and "cannot open /data/" in body
    assert alerter.failed == 0


def test_a_plain_traceback_is_one_alert_naming_its_exception(
    journald, container, smtp_server, monitor_factory
) -> None:
    """Docker writes each stderr line as an entry: uwsgi failing to import the app (before JSON
    logging is up) was one alert per traceback line, the exception left out past 20 lines."""
    monitor = monitor_factory()
    monitor.wait_ready(journald, container)
    frames = [f'  File "/app/app/mod{i}.py", line {i}, in f{i}\n    f{i + 1}()' for i in range(15)]
    exception = "FileNotFoundError: [Errno 2] No such file or directory: '/model/latest/manifest.json'"
    lines = ["Traceback (most recent call last):", *"\n".join(frames).splitlines(), exception]
    for line in lines:
        journald.send(line, priority=3, CONTAINER_NAME=container)
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert "FileNotFoundError: [Errno 2] No such file or directory" in msg["Subject"]
    assert msg["X-Movierec-Alert-Count"] == "1"
    body = msg.get_content()
    assert "        FileNotFoundError: [Errno 2]" in body and '        File "/app/app/mod0.py"' in body
    time.sleep(2.0)
    assert len(smtp_server.handler.received) == 1


def test_print_survives_a_line_its_stdout_cannot_encode(
    journald, container, smtp_server, monitor_factory
) -> None:
    """A JSON line may carry "\\udcff" (a surrogate-escaped file name). On a host whose locale is
    not C (stdout's errors are 'strict' there, as PYTHONIOENCODING=utf-8 makes them here),
    --print raised UnicodeEncodeError: the monitor died, and with --cursor-file it resumed
    before that entry and died on it again, for ever."""
    monitor = monitor_factory(env_extra={"PYTHONIOENCODING": "utf-8"})
    monitor.wait_ready(journald, container)
    poison = app_line("INFO", "MARK").replace("MARK", "/data/\\udcff.csv")  # the JSON escape itself
    journald.send(poison, CONTAINER_NAME=container)
    journald.send(app_line("ERROR", "after the odd line"), CONTAINER_NAME=container)
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert "after the odd line" in msg["Subject"]
    assert monitor.proc.poll() is None, "".join(monitor.stderr)[-2000:]
    assert any("/data/?.csv" in line for line in monitor.lines)
    assert monitor.stop() == 0


NO_ENTRIES = "no journal entries for CONTAINER_NAME="


def _log_lines(monitor: MonitorProcess) -> list[dict]:
    return [json.loads(line) for line in monitor.stderr if line.startswith("{")]


def _started(monitor: MonitorProcess) -> None:
    """Wait for the monitor's "monitoring container" line: its start-up look at the journal is done
    (the canaries of ``wait_ready`` would otherwise be the entries it finds)."""
    deadline = time.monotonic() + ARRIVAL_SECONDS
    while not any(line.get("message") == "monitoring container" for line in _log_lines(monitor)):
        assert monitor.proc.poll() is None and time.monotonic() < deadline, monitor.stderr
        time.sleep(0.05)


def test_a_container_name_without_entries_is_one_warning_at_start_and_still_followed(
    journald, container, smtp_server, monitor_factory
) -> None:
    """A mistyped or renamed container: the monitor watched nothing for ever and said nothing.
    It warns once at start (its own log on stderr, not an email), naming the name and how to
    list the names, and follows the name anyway, in case the container starts later."""
    monitor = monitor_factory()
    _started(monitor)
    monitor.wait_ready(journald, container)  # the container appears after the start
    warned = [line for line in _log_lines(monitor) if NO_ENTRIES in line["message"]]
    assert len(warned) == 1, monitor.stderr
    assert warned[0]["level"] == "WARNING" and container in warned[0]["message"]
    assert "docker ps --format '{{.Names}}'" in warned[0]["message"]
    journald.send(app_line("ERROR", "the late container failed"), CONTAINER_NAME=container)
    messages = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    time.sleep(1.5)  # > group-wait: a second email would be here by now
    assert len(smtp_server.handler.received) == 1, [m["Subject"] for m in smtp_server.handler.received]
    assert "the late container failed" in messages[0].get_content()  # the warning was no email


def test_a_container_with_entries_gets_no_such_warning(
    journald, container, smtp_server, monitor_factory
) -> None:
    journald.send("an earlier run", CONTAINER_NAME=container)
    assert journal_read({"CONTAINER_NAME": container})
    monitor = monitor_factory()
    _started(monitor)
    monitor.wait_ready(journald, container)
    assert not [line for line in _log_lines(monitor) if NO_ENTRIES in line["message"]], monitor.stderr


def test_a_journal_this_user_may_not_read_is_exit_2_naming_journalctl_s_words(
    journald, container, smtp_server, monitor_factory, tmp_path: Path
) -> None:
    """Run by a user outside the systemd-journal/adm groups (a unit given User=), journalctl
    exits 1 at once ("No journal files were opened due to insufficient permissions."). The
    monitor logged in to SMTP, said "monitoring container" and restarted journalctl with backoff
    for ever: alive to systemd, reading nothing, never alerting. It is exit 2 at start now,
    before the SMTP login, with journalctl's own words."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the real journalctl as an unprivileged user")
    unprivileged = tmp_path / "journalctl-as-nobody"
    nobody = f"{setpriv} --reuid=65534 --regid=65534 --clear-groups"
    unprivileged.write_text(f'#!/bin/sh\nexec {nobody} {shutil.which("journalctl")} "$@"\n')
    unprivileged.chmod(0o755)
    monitor = monitor_factory("--journalctl", str(unprivileged))
    code = monitor.proc.wait(timeout=30)
    err = "".join(monitor.stderr)
    assert code == 2, err
    assert "monitor-docker: error: journalctl cannot read the journal" in err
    assert "insufficient permissions" in err and "Traceback" not in err
    assert smtp_server.auth.attempts == []  # refused before the SMTP login


def test_a_hangup_stops_cleanly_and_sends_the_alerts_still_waiting(
    journald, container, smtp_server, monitor_factory
) -> None:
    """Run in a terminal (the seed's example, with --print) whose SSH session then dropped, the
    monitor got SIGHUP and died at once: the alerts waiting for their group or window were never
    sent (without --cursor-file, never at all). SIGHUP stops it like SIGTERM now: one attempt at
    what is pending, the cursor saved, exit 0."""
    monitor = monitor_factory(group_wait=60.0)
    monitor.wait_ready(journald, container)
    journald.send(app_line("ERROR", "the hangup must not lose me"), CONTAINER_NAME=container)
    deadline = time.monotonic() + 15
    while not any("the hangup must not lose me" in line for line in monitor.lines):
        assert time.monotonic() < deadline, monitor.stderr
        time.sleep(0.05)
    assert smtp_server.handler.received == []  # waiting for its group (60 s)
    monitor.proc.send_signal(signal.SIGHUP)
    assert monitor.proc.wait(timeout=20) == 0, "".join(monitor.stderr)
    [message] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert "the hangup must not lose me" in message.get_content()


def test_a_relay_that_offers_no_login_is_told_to_use_no_auth() -> None:
    """A relay that takes mail without a login (a local Postfix) offers no AUTH: with a password
    configured, the exit-2 message said only "try --is-secure", and never named --no-auth, the
    option for such a relay."""
    controller = Controller(RecordingHandler(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        sink = _sink(controller.port)
        with pytest.raises(AlertDeliveryError) as caught:
            sink.verify()
    finally:
        controller.stop()
    message = str(caught.value)
    assert "AUTH extension not supported" in message
    assert "--no-auth" in message and "--is-secure" in message
    assert not caught.value.retryable


def test_under_nohup_a_hangup_does_not_stop_the_monitor(journald, container, monitor_factory) -> None:
    monitor = monitor_factory(launcher=("nohup",))
    monitor.wait_ready(journald, container)  # following: else the hang-up would test nothing
    monitor.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert monitor.proc.poll() is None, "nohup's SIGHUP stopped the monitor"
    assert monitor.stop() == 0


def test_a_cursor_file_journalctl_refuses_is_ignored_not_retried_for_ever(
    journald, container, smtp_server, monitor_factory, tmp_path: Path
) -> None:
    """A cursor file cut short or edited by hand ("s=4f0d;i=2a": hex pairs, but no journal
    cursor) passed the monitor's check, and journalctl refused it at each start ("Failed to seek
    to cursor: Invalid argument", exit 1): restarted with it for ever, the monitor alive to
    systemd and reading nothing. It is ignored with a warning now, like any malformed file, and
    the first save writes a cursor journald made."""
    cursor_file = tmp_path / "cursor"
    cursor_file.write_text("s=4f0d;i=2a\n")
    monitor = monitor_factory("--cursor-file", str(cursor_file))
    monitor.wait_ready(journald, container)
    journald.send(app_line("ERROR", "after a broken cursor file"), CONTAINER_NAME=container)
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    assert "after a broken cursor file" in msg.get_content()
    assert monitor.stop() == 0
    logged = [line["message"] for line in _log_lines(monitor)]
    assert "ignoring a malformed cursor file" in logged and "journalctl exited; restarting" not in logged
    assert re.fullmatch(r"s=[0-9a-f]{32};i=[0-9a-f]+;b=[0-9a-f]{32};.*", cursor_file.read_text().strip())


@pytest.mark.parametrize(
    ("refusals", "refused_recipients", "refused_word"),
    [
        ({"MAIL": "553 5.7.1 Sender address rejected: not owned by user"}, {}, "refused sender"),
        ({"MAIL": "530 5.7.0 Must issue a STARTTLS command first"}, {}, "refused sender"),
        ({}, {USER: "550 5.1.1 No such user", OTHER: "550 5.1.1 No such user"}, "refused recipients"),
    ],
)
def test_the_start_up_check_fails_on_a_sender_or_recipients_the_server_always_refuses(
    refusals: dict[str, str], refused_recipients: dict[str, str], refused_word: str
) -> None:
    """The start-up check logged in and stopped there: a server that refuses the sender (a login
    that may not send as EMAIL, a relay that wants STARTTLS first) or every recipient, for good
    (5xx), let the monitor start, and each alert was then refused at its first email, at 3 a.m.,
    and dropped: the monitor up, no one ever mailed. The check names sender and recipients (MAIL
    FROM, RCPT TO, RSET: no email sent) and such a refusal is a configuration error."""
    handler = RefusingHandler()
    handler.refusals.update(refusals)
    handler.refused_recipients.update(refused_recipients)
    server = start_smtp(handler)
    try:
        with pytest.raises(AlertDeliveryError, match=refused_word) as info:
            _sink(server.port, recipients=[USER, OTHER]).verify()
        reply = next(iter({**refusals, **refused_recipients}.values()))
        assert reply in str(info.value) and f"127.0.0.1:{server.port}" in str(info.value)
        assert not info.value.retryable and PASSWORD not in str(info.value)
        assert handler.received == []
    finally:
        server.controller.stop()


@pytest.mark.parametrize(
    ("refusals", "refused_recipients"),
    [
        ({}, {OTHER: "550 5.1.1 No such user"}),  # the others still get every alert
        ({"RCPT": "450 4.2.0 Greylisted, try again later"}, {}),  # retried when an alert is sent
        ({"MAIL": "421 4.7.0 Too many messages, slow down"}, {}),
    ],
)
def test_the_start_up_check_only_warns_of_what_still_lets_alerts_through(
    refusals: dict[str, str], refused_recipients: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    handler = RefusingHandler()
    handler.refusals.update(refusals)
    handler.refused_recipients.update(refused_recipients)
    server = start_smtp(handler)
    try:
        with caplog.at_level("WARNING", logger="app.monitoring.alerts"):
            _sink(server.port, recipients=[USER, OTHER]).verify()
        reply = next(iter({**refusals, **refused_recipients}.values()))
        [record] = [r for r in caplog.records if r.name == "app.monitoring.alerts"]
        assert reply in f"{record.getMessage()} {record.__dict__}" and record.levelname == "WARNING"
        assert handler.received == []
    finally:
        server.controller.stop()


def test_a_sender_the_server_refuses_is_exit_2_at_start(journald, container, tmp_path: Path) -> None:
    handler = RefusingHandler()
    handler.refusals["MAIL"] = "553 5.7.1 Sender address rejected: not owned by user"
    server = start_smtp(handler)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MONITOR_SMTP")}}
    env["MONITOR_SMTP_PASSWORD"] = PASSWORD
    monitor = MonitorProcess([container, "127.0.0.1", USER, "--smtp-port", str(server.port)], env)
    try:
        code = monitor.proc.wait(timeout=30)
    finally:
        monitor.stop()
        server.controller.stop()
    err = "".join(monitor.stderr)
    assert code == 2, err
    assert f"refused sender '{USER}': 553 5.7.1" in err and "Traceback" not in err
    assert handler.received == []


@pytest.mark.parametrize("smtputf8", [False, True])
def test_a_non_ascii_address_is_checked_at_start_against_the_server_s_smtputf8(smtputf8: bool) -> None:
    """Python's SMTP client sends a non-ASCII address only with SMTPUTF8: to a server without it
    each alert failed ("dropped the connection", retried for ever), and the start-up check, naming
    the addresses, would have ended in a UnicodeEncodeError traceback."""
    handler = RefusingHandler()
    server = start_smtp(handler, enable_SMTPUTF8=smtputf8)
    address = "astreinte@exämple.test"
    try:
        sink = _sink(server.port, recipients=[USER, address])
        if smtputf8:
            sink.verify()
        else:
            with pytest.raises(AlertDeliveryError, match="no SMTPUTF8") as info:
                sink.verify()
            assert address in str(info.value) and not info.value.retryable
        assert handler.received == []
    finally:
        server.controller.stop()


def test_an_alert_from_the_first_entry_read_is_not_lost_to_a_restart(
    journald, container, tmp_path: Path
) -> None:
    """With --cursor-file and no position saved yet (the first start, or a malformed file), the
    monitor followed from the end of the journal (--lines=0) and had no cursor for "just before
    the first entry read": an alert that entry raised had no position, and while it waited (an
    SMTP server saying "try again later") nothing at all was saved. Stopped meanwhile, the next
    start began at the end of the journal again: that alert, and all after it, never sent. The
    follow now starts after the newest entry found at start, a position the file can hold."""
    journald.send("an earlier run", CONTAINER_NAME=container)
    [earlier] = journal_read({"CONTAINER_NAME": container})
    handler = RefusingHandler()
    handler.refusals["DATA"] = "451 4.3.0 Try again later"
    server = start_smtp(handler)
    cursor_file = tmp_path / "cursor"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_SMTP")}
    env["MONITOR_SMTP_PASSWORD"] = PASSWORD
    args = [container, "127.0.0.1", USER, "--smtp-port", str(server.port), "--group-wait", "0.5"]
    args += ["--cursor-file", str(cursor_file)]
    started: list[MonitorProcess] = []

    def logged(monitor: MonitorProcess, message: str) -> None:
        deadline = time.monotonic() + ARRIVAL_SECONDS
        while not any(line.get("message") == message for line in _log_lines(monitor)):
            assert monitor.proc.poll() is None and time.monotonic() < deadline, monitor.stderr
            time.sleep(0.05)

    try:
        started.append(MonitorProcess(args, env))
        logged(started[0], "starting journalctl")
        journald.send(app_line("ERROR", "the first entry read"), CONTAINER_NAME=container)
        logged(started[0], "alert delivery failed")
        assert started[0].stop() == 0, started[0].stderr
        assert cursor_file.read_text().strip() == earlier["__CURSOR"]
        del handler.refusals["DATA"]
        started.append(MonitorProcess(args, env))
        [msg] = server.wait_for(1, ARRIVAL_SECONDS)
        assert "the first entry read" in msg.get_content()
    finally:
        for monitor in started:
            monitor.stop()
        server.controller.stop()


@contextlib.contextmanager
def _server_answering(replies: dict[str, bytes]) -> Iterator[int]:
    """A port whose server greets, answers each command named in ``replies`` with its reply
    (closing the connection after a 421, as RFC 5321 has it) and any other with "250 OK"."""

    def handle(conn: socket.socket, reader: Any) -> None:
        conn.sendall(b"220 relay ESMTP\r\n")
        for line in reader:
            command = line.split(b" ", 1)[0].strip().upper().decode()
            if command == "QUIT":
                conn.sendall(b"221 Bye\r\n")
                break
            default = b"250-relay\r\n250 STARTTLS\r\n" if command == "EHLO" else b"250 OK\r\n"
            reply = replies.get(command, default)
            conn.sendall(reply)
            if reply.startswith(b"421"):
                break

    with _scripted_server(handle) as port:
        yield port


@pytest.mark.parametrize(
    ("security", "replies"),
    [
        ("none", {"EHLO": b"421 4.3.2 Service shutting down\r\n"}),
        ("starttls", {"EHLO": b"421 4.3.2 Service shutting down\r\n"}),
        ("starttls", {"STARTTLS": b"454 4.7.0 TLS not available due to temporary reason\r\n"}),
    ],
)
def test_a_try_again_later_while_connecting_is_retried_not_a_configuration_error(
    security: str, replies: dict[str, bytes]
) -> None:
    """A 4xx reply to EHLO or STARTTLS (a relay shutting down answers 421 to any command; 454, TLS
    not available now) is "try again later", as it is to the login or the mail. To EHLO it was
    read as a server without AUTH or STARTTLS ("try --is-secure", "--no-auth"), to STARTTLS as an
    SMTP error: at start each was exit 2, which the unit does not restart."""
    with _server_answering(replies) as port, pytest.raises(SmtpConnectionError) as info:
        _sink(port, security=security).verify()
    reply = next(iter(replies.values())).decode().strip()
    assert info.value.retryable and reply in str(info.value), str(info.value)
    assert "--no-auth" not in str(info.value) and "--is-secure" not in str(info.value)


def test_control_characters_of_an_entry_reach_the_email_visible_not_raw(smtp_server: SmtpServer) -> None:
    """A MESSAGE may hold any byte (a binary field, a process dumping to stderr, a terminal's
    colour codes): NUL, BEL and ESC went raw into the subject and body, which RFC 5322 leaves
    out of a message (a mail reader written in C cuts a subject at its NUL; a terminal one plays
    the escape sequences). They are written as \\x00, \\x1b … now; tabs and line breaks stay."""
    alerter = Alerter([_sink(smtp_server.port)], group_wait=60)
    alerter.raise_alert(
        Alert("log.error", "error", "disk \x00 full \x1b[31mred\x1b[0m \x07", {"exc": "a\tb\nc\x00d"})
    )
    alerter.flush()
    [msg] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
    raw = msg.as_bytes()
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", raw), raw
    assert "disk \\x00 full \\x1b[31mred\\x1b[0m \\x07" in msg["Subject"]
    body = msg.get_content()
    assert "        a\tb" in body and "        c\\x00d" in body


class StalledReader:
    """The monitor's stdout as a paused pager has it: read only while :meth:`read_until` runs,
    left unread (the pipe's 64 KiB filling up) in between."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.text = ""

    def read_until(self, token: str, timeout: float = ARRIVAL_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while token not in self.text:
            assert time.monotonic() < deadline, f"never printed {token!r}: {self.text[-500:]!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                assert chunk, f"stdout closed before {token!r}"
                self.text += chunk.decode("utf-8", "replace")


def test_a_print_reader_that_stalls_does_not_stop_the_alerts(journald, container, smtp_server) -> None:
    """`monitor-docker.py … --print | less`, and the pager paused (scrolled back, or on hold): the
    echo was written in the monitor's loop, and once the pipe's 64 KiB were full that write waited
    for the reader, and the loop with it: no entry read, no alert sent, no SIGTERM heeded, for as
    long as the pager stayed paused. The printing waits on its own now; what an output that does
    not read cannot take is left out, and the next line printed says how many were."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_SMTP")}
    env["MONITOR_SMTP_PASSWORD"] = PASSWORD
    args = [container, "127.0.0.1", USER, "--smtp-port", str(smtp_server.port), "--print"]
    args += ["--group-wait", "0.5", "--window", "30", "--smtp-timeout", "5"]
    with hang_up_at_default_in_children():
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "monitor-docker.py"), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    stderr: list[bytes] = []
    assert proc.stderr is not None
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    out = StalledReader(proc)
    try:
        deadline = time.monotonic() + ARRIVAL_SECONDS
        while "canary" not in out.text:  # following once it echoes a canary
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(stderr)[-2000:]
            journald.send("canary", CONTAINER_NAME=container)
            with contextlib.suppress(AssertionError):
                out.read_until("canary", timeout=0.5)
        # The reader pauses: 1 MB of entries, more than the pipe and any backlog hold.
        for i in range(1000):
            journald.send(f"busy line {i} " + "x" * 1000, CONTAINER_NAME=container)
        journald.send(app_line("ERROR", "raised while nobody reads the print"), CONTAINER_NAME=container)
        [message] = smtp_server.wait_for(1, ARRIVAL_SECONDS)
        assert "raised while nobody reads the print" in message.get_content(), b"".join(stderr)[-2000:]
        assert proc.poll() is None
        # The reader reads again: the lines left out are counted where they were left out.
        journald.send("read again", CONTAINER_NAME=container)
        out.read_until("read again")
        notice = re.search(r"--print: (\d+) entries not printed here", out.text)
        assert notice and int(notice[1]) > 0, out.text[-2000:]
        assert out.text.index("busy line 0 ") < notice.start() < out.text.index("read again")
        # Paused again, and stopped meanwhile: it stops all the same.
        for i in range(1000):
            journald.send(f"busy again {i} " + "x" * 1000, CONTAINER_NAME=container)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, b"".join(stderr)[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
