"""Helpers for the browser tier: Debian's Chromium driven by Playwright, the app on a loopback port.

Only the system browser is used (``/usr/bin/chromium``, installed with apt when missing and
the test runs as root); Playwright's own browser downloads are never used. Every request
the page makes is recorded, and anything not addressed to the test server is aborted, so
a page that tried to reach the internet fails its test instead of silently loading.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
APT_TIMEOUT = 600


def ensure_chromium() -> Path:
    """The system Chromium; installed with apt-get when missing and we are root, else skip."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium) and cannot be installed here"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"could not install chromium with apt-get: {result.stderr.strip()[-300:]}")
    if not CHROMIUM.exists():
        pytest.skip("apt-get installed chromium but /usr/bin/chromium is missing")
    return CHROMIUM


class LiveServer:
    """A Flask app served by Werkzeug on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="live-server", daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@dataclass
class RequestLog:
    """Every URL the browser asked for, and those that were blocked for leaving the test server."""

    allowed_prefix: str
    seen: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        self.seen.append(url)
        if url.startswith(self.allowed_prefix + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@contextmanager
def browser_page(
    base_url: str, viewport: dict[str, int] | None = None, javascript: bool = True
) -> Iterator[tuple[Any, RequestLog]]:
    """A fresh Chromium context and page that may only talk to ``base_url`` (scripts off with
    ``javascript=False``)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = ensure_chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                base_url=base_url,
                viewport=viewport or {"width": 1280, "height": 900},
                reduced_motion="reduce",
                java_script_enabled=javascript,
            )
            requests = RequestLog(base_url)
            context.route("**/*", requests.route)
            page = context.new_page()
            page.set_default_timeout(60_000)  # navigations and actions: a bound for a page that never comes
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A page answered 400 (an invalid form) is expected; a failing script, style or image is not.
            page.on("console", lambda msg: errors.append(msg.text) if _is_script_error(msg) else None)
            page.on(
                "response",
                lambda r: (
                    errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 and r.request.resource_type != "document"
                    else None
                ),
            )
            yield page, requests
            assert not errors, f"JavaScript errors on the page: {errors}"
            context.close()
        finally:
            browser.close()


def _is_script_error(message: Any) -> bool:
    """Console errors other than Chromium's note about a document answered with 4xx/5xx."""
    return message.type == "error" and not message.text.startswith("Failed to load resource")


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    """Save a PNG under test-artifacts/screenshots/ (git-ignored) and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
