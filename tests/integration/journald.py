"""A real systemd-journald for tests: reuse the running one or start one, and write entries.

Why not systemd-cat: it cannot add a CONTAINER_NAME field, and Docker's journald driver
does. Entries are written with journald's native protocol over its datagram socket, the
way the Docker driver (via sd_journal_send) does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SOCKET_PATH = "/run/systemd/journal/socket"
JOURNALD_BINARIES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")


class JournaldUnavailable(Exception):
    """journald is not running and cannot be started here; the reason is the message."""


def _socket_alive(path: str = SOCKET_PATH) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def encode_fields(fields: Mapping[str, str]) -> bytes:
    """journald native protocol: KEY=value lines; values with newlines use the length form."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def journal_send(fields: Mapping[str, str], path: str = SOCKET_PATH) -> None:
    """Write one entry (MESSAGE, PRIORITY, CONTAINER_NAME, ...) to journald."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(encode_fields(fields), path)
    finally:
        sock.close()


def journal_read(match: Mapping[str, str], timeout: float = 5.0) -> list[dict[str, object]]:
    """Entries matching ``match`` (non-following read), polled until one appears or timeout."""
    args = ["journalctl", "--output=json", "--all", "--no-pager", *(f"{k}={v}" for k, v in match.items())]
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        entries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


@dataclass
class Journald:
    started_by_us: bool
    process: subprocess.Popen[bytes] | None

    def send(self, message: str, *, priority: int = 6, **fields: str) -> None:
        journal_send({"MESSAGE": message, "PRIORITY": str(priority), **fields})


def start_journald(timeout: float = 60.0) -> Journald:
    """Reuse a running journald, or start one as root; raise JournaldUnavailable with the reason.

    ``timeout`` bounds waits for what comes (the socket, the probe read back) and is generous: the
    callers skip their tier on JournaldUnavailable, so a start slowed by a loaded machine silently
    dropped the journald and docker-logging tests when it was 10 s."""
    if shutil.which("journalctl") is None:
        raise JournaldUnavailable("journalctl is not installed")
    if _socket_alive():
        handle = Journald(started_by_us=False, process=None)
    else:
        binary = next((b for b in JOURNALD_BINARIES if os.path.exists(b)), None)
        if binary is None:
            raise JournaldUnavailable("systemd-journald is not installed (apt-get install systemd)")
        if os.geteuid() != 0:
            raise JournaldUnavailable("journald is not running and starting it needs root")
        Path("/run/systemd/journal").mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [binary], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not _socket_alive():
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                raise JournaldUnavailable(f"systemd-journald exited with {proc.returncode}: {err[:300]}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise JournaldUnavailable(f"systemd-journald socket did not appear within {timeout} s")
            time.sleep(0.05)
        handle = Journald(started_by_us=True, process=proc)
    # Prove the round trip (write through the socket, read with journalctl) before relying on it.
    probe = f"probe-{uuid.uuid4().hex}"
    journal_send({"MESSAGE": "journald probe", "MOVIEREC_TEST_PROBE": probe})
    if not journal_read({"MOVIEREC_TEST_PROBE": probe}, timeout=timeout):
        stop_journald(handle)
        raise JournaldUnavailable("journald accepted an entry but journalctl could not read it back")
    return handle


def stop_journald(handle: Journald) -> None:
    """Stop journald only if this test session started it."""
    if handle.started_by_us and handle.process is not None and handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait()


def running_journald() -> Iterator[Journald]:
    """Generator body for a pytest fixture: yields a live journald, stops it afterwards if ours."""
    handle = start_journald()
    try:
        yield handle
    finally:
        stop_journald(handle)
