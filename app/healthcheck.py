"""The containers' health check: ``python -m app.healthcheck [URL]``, exit 0 when URL answers 2xx.

``--model-version VERSION`` also fails it unless the answer (/health/ready's) names that model
version: deploy-docker.py runs it in the new container (``docker exec``) once Docker calls it
healthy, so a container serving another model than the one just built and tested is rolled back.

Docker runs it inside the container (the Dockerfile's HEALTHCHECK, docker-compose.yml's mlflow)
against the container's own loopback (default: ``http://127.0.0.1:$MOVIEREC_PORT/health/ready``).
It never goes through a proxy: Docker gives containers the client's proxy settings
(``proxies`` in ~/.docker/config.json) as HTTP_PROXY and NO_PROXY, and urllib does not read
NO_PROXY's CIDR form (``127.0.0.0/8``, Docker's own example), so a check that honoured them asked
the proxy for 127.0.0.1, which the proxy cannot reach: a healthy service was never ``healthy``.
Standard library only; the reason of a failure is its one line of output (``docker inspect``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Final

TIMEOUT_SECONDS: Final = 4.0
"""Under the HEALTHCHECK's --timeout (5 s): a slow answer is this check's failure, with its reason."""
DEFAULT_PORT: Final = "8000"  # scripts/start-uwsgi.sh's and app/listener.py's


def default_url(environ: Mapping[str, str]) -> str:
    """The API's readiness on this container's loopback; an empty MOVIEREC_PORT is the default
    port, as the start script takes it."""
    return f"http://127.0.0.1:{environ.get('MOVIEREC_PORT') or DEFAULT_PORT}/health/ready"


def direct_opener() -> urllib.request.OpenerDirector:
    """An opener that uses no proxy, whatever the environment says."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback (``localhost``, 127.0.0.0/8, ::1): never
    reached through a proxy (app.deploy's smoke test asks it directly too)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> bytes:
    """The body ``url`` answers with 2xx (redirects followed); raise OSError otherwise."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    opener = direct_opener()  # no proxy, whatever the env says
    with opener.open(url, timeout=timeout) as response:  # nosec B310 - http(s) only, checked above
        body: bytes = response.read()
    return body


def served_model_version(body: bytes) -> object:
    """The ``model_version`` a /health/ready answer names (None when it names none)."""
    try:
        answer = json.loads(body or b"{}")
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None
    return answer.get("model_version") if isinstance(answer, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.healthcheck", description="Exit 0 when URL answers 2xx."
    )
    parser.add_argument("url", nargs="?", default=None, help="default: this container's /health/ready")
    parser.add_argument(
        "--model-version", default=None, metavar="VERSION",
        help="also fail unless the answer names this model version",
    )  # fmt: skip
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    url = args.url or default_url(os.environ)
    try:
        body = probe(url)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if args.model_version is not None:
        served = served_model_version(body)
        if served != args.model_version:
            print(f"unhealthy: {url} serves model {served!r}, not {args.model_version!r}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
