#!/usr/bin/env python
"""The seed's entry point: ``ML_MODEL_PATH=… SESSION_PASSWORD=… python main.py --port 5000 --debug``.

Development server only; production runs uwsgi through ``scripts/start-uwsgi.sh`` (``make serve-prod``,
the image), which binds the port ``uwsgi.ini`` takes as ``http = fd://3``: ``uwsgi --ini uwsgi.ini``
alone has no port.
"""

from __future__ import annotations

import argparse
import sys

from app import StartupError, check_listen_address, create_app, run_development_server
from app.config import ConfigurationError, load_settings
from app.listener import MAX_PORT, ListenerError


def _port(text: str) -> int:
    """A TCP port, 1..65535: 99999 was served on 34463 (the socket layer keeps the low 16 bits)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{port} is not between 1 and {MAX_PORT}")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the movierec API (development server).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=5000, help="port (default 5000)")
    parser.add_argument("--debug", action="store_true", help="Flask debug mode (development only)")
    args = parser.parse_args(argv)
    try:
        check_listen_address(args.host, args.port)
    except ListenerError as exc:
        print(f"movierec: {exc}", file=sys.stderr)
        return 1
    try:
        settings = load_settings(debug=args.debug)
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"movierec: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:  # the database cannot be reached, or a newer release migrated it
        print(f"movierec: {exc}", file=sys.stderr)
        return 1
    run_development_server(app, args.host, args.port, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
