"""Browser-facing hardening: security headers, no caching of API answers, body size limit, CORS."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.helpers import PROFILE

pytestmark = pytest.mark.api

JSON = {"Content-Type": "application/json"}


def _responses(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    """One response of each kind: success, validation error, 401, 404, 405, and an HTML page."""
    return {
        "recommend 200": client.post("/api/recommend", json=PROFILE, headers=headers),
        "recommend 400": client.post("/api/recommend", json={"age": True}, headers=headers),
        "protected 401": client.get("/protected"),
        "unknown 404": client.get("/api/nothing-here"),
        "login 405": client.get("/api/login"),
        "health 200": client.get("/health/live"),
        "docs html": client.get("/docs"),
    }


def test_security_headers_on_every_response(client: Any, auth_headers: dict[str, str]) -> None:
    for name, response in _responses(client, auth_headers).items():
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert "Strict-Transport-Security" not in headers, name  # off unless the deployment has TLS
        if response.mimetype == "application/json":
            assert headers["Cache-Control"] == "no-store", name
            assert "default-src 'none'" in headers["Content-Security-Policy"], name


def test_hsts_when_configured(make_app: Any) -> None:
    response = make_app(hsts_seconds=31536000).test_client().get("/health/live")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_tokens_are_never_cacheable(client: Any) -> None:
    from tests.helpers import SESSION_PASSWORD

    response = client.post("/api/login", json={"session_password": SESSION_PASSWORD})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"


def test_oversized_body_is_413_in_the_envelope(app: Any, client: Any, auth_headers: dict[str, str]) -> None:
    limit = app.extensions["movierec"].settings.max_body_bytes
    padded = b'{"age": 30, "gender": "M", "occupation": "programmer", "pad": "' + b"x" * limit + b'"}'
    for path in ("/api/recommend", "/api/login", "/api/recommend/score"):
        response = client.post(path, data=padded, headers={**JSON, **auth_headers})
        assert response.status_code == 413, (path, response.status_code)
        assert response.get_json()["error"]["code"] == "payload_too_large"
    # just under the limit is read and judged on its content (400 for the unknown field), not its size
    fits = b'{"age": 30, "gender": "M", "occupation": "programmer", "pad": "' + b"x" * (limit - 100) + b'"}'
    assert client.post("/api/recommend", data=fits, headers={**JSON, **auth_headers}).status_code == 400


def _chunked(
    app: Any, path: str, body: bytes, headers: dict[str, str], *, terminated: bool = True
) -> tuple[int, Any]:
    """A request as a server hands over a chunked upload: no CONTENT_LENGTH, input terminated
    (Werkzeug's server) or not (uwsgi, which passes no chunked body to the app).

    Called on the WSGI app directly: the test client would replace wsgi.input.
    """
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(path=path, method="POST", headers={**JSON, **headers}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(body)})
    if terminated:
        environ["wsgi.input_terminated"] = True
    app_iter, status, _headers = run_wsgi_app(app, environ)
    return int(status.split()[0]), json.loads(b"".join(app_iter))


def test_chunked_body_without_content_length_is_limited_too(
    app: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    """No Content-Length (Transfer-Encoding: chunked): the stream is cut at the limit while reading."""
    limit = app.extensions["movierec"].settings.max_body_bytes
    body = b'{"age": 30, "gender": "M", "occupation": "programmer", "pad": "' + b"x" * (2 * limit) + b'"}'
    status, body_json = _chunked(app, "/api/recommend", body, auth_headers)
    assert status == 413 and body_json["error"]["code"] == "payload_too_large"
    # a limit-sized prefix of valid JSON followed by more bytes is still refused, not parsed
    sneaky = b'{"age": 30, "gender": "M", "occupation": "programmer"}' + b" " * (2 * limit)
    assert _chunked(app, "/api/recommend", sneaky, auth_headers)[0] == 413
    small = b'{"age": 30, "gender": "M", "occupation": "programmer"}'
    status, body_json = _chunked(app, "/api/recommend", small, auth_headers)
    assert status == 200 and body_json["recommendations"]


def test_a_chunked_bulk_body_has_the_bulk_limit(app: Any, auth_headers: dict[str, str]) -> None:
    """The bulk endpoints' 2 MiB limit holds for chunked bodies too (the check of undeclared
    bodies ran before the bulk limit was set, and refused a 142 KB batch at 64 KiB)."""
    from app.api.serving_schemas import BULK_MAX_BODY_BYTES

    record = {"age": 30, "gender": "M", "occupation": "programmer", "movie_id": 1}
    body = json.dumps({"instances": [record] * 2_000}).encode()
    assert 64 * 1024 < len(body) < BULK_MAX_BODY_BYTES
    status, answer = _chunked(app, "/api/predict/batch", body, auth_headers)
    assert status == 200 and len(answer["predictions"]) == 2_000
    over = json.dumps({"instances": [record] * 40_000}).encode()
    assert len(over) > BULK_MAX_BODY_BYTES
    assert _chunked(app, "/api/predict/batch", over, auth_headers)[0] == 413


def test_a_chunked_body_the_server_does_not_pass_on_is_411(app: Any, auth_headers: dict[str, str]) -> None:
    """uwsgi gives the app no chunked body: the answer asks for a Content-Length (it was a 400
    "not valid JSON" about a body the client did send)."""
    small = json.dumps(PROFILE).encode()
    status, answer = _chunked(app, "/api/recommend", small, auth_headers, terminated=False)
    assert status == 411 and answer["error"]["code"] == "invalid_request"
    assert "Content-Length" in answer["error"]["message"]


def _posted(app: Any, path: str, body: bytes, headers: dict[str, str], declared: int | None = None) -> tuple:
    """POST ``body`` through the WSGI app with a Content-Length; the status and how much of the
    body the app had read when its answer went out."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(path=path, method="POST", headers={**JSON, **headers}).get_environ()
    stream = io.BytesIO(body)
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": str(len(body) if declared is None else declared)})
    app_iter, status, _headers = run_wsgi_app(app, environ)
    b"".join(app_iter)
    return int(status.split()[0]), stream.tell()


def test_an_error_answer_reads_the_rest_of_the_body_first(app: Any, auth_headers: dict[str, str]) -> None:
    """An answer that did not need the body still reads it to its declared end (uwsgi reads none
    for the app: unread, the HTTP router reset the client's connection instead of delivering
    the answer), never past that end, and not at all past DRAIN_LIMIT."""
    from app.api.security import DRAIN_LIMIT

    limit = app.extensions["movierec"].settings.max_body_bytes
    big = b'{"pad": "' + b"x" * (4 * limit) + b'"}'
    assert _posted(app, "/api/recommend", big, auth_headers) == (413, len(big))  # over the endpoint's limit
    text = {**auth_headers, "Content-Type": "text/plain"}  # 415: refused on its type, never parsed
    assert _posted(app, "/api/recommend", big[:limit], text) == (415, limit)
    following = b"GET /next HTTP/1.1\r\n"  # what a kept-alive connection may hold next
    assert _posted(app, "/api/recommend", big[:limit] + following, text, declared=limit) == (415, limit)
    # a success read it already; a body declared past DRAIN_LIMIT is left alone
    assert _posted(app, "/api/recommend", json.dumps(PROFILE).encode(), auth_headers)[0] == 200
    assert _posted(app, "/api/recommend", big, auth_headers, declared=DRAIN_LIMIT + 1) == (413, 0)


def test_cors_is_off_by_default(client: Any, auth_headers: dict[str, str]) -> None:
    origin = {"Origin": "https://evil.example"}
    simple = client.post("/api/recommend", json=PROFILE, headers={**auth_headers, **origin})
    preflight = client.options("/api/recommend", headers={**origin, "Access-Control-Request-Method": "POST"})
    for response in (simple, preflight):
        assert not any(h.lower().startswith("access-control-") for h, _ in response.headers.items())


def _preflight(client: Any, origin: str, request_headers: str) -> Any:
    """A browser's CORS preflight for a POST to /api/recommend sending ``request_headers``."""
    return client.options(
        "/api/recommend",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": request_headers,
        },
    )


def test_cors_allows_only_the_configured_origins(make_app: Any) -> None:
    client = make_app(cors_origins="https://ui.example, https://admin.example:8443").test_client()
    preflight = _preflight(client, "https://ui.example", "authorization, content-type")
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers  # bearer tokens, no cookies
    assert "Origin" in preflight.headers["Vary"]
    allowed = client.get("/health/live", headers={"Origin": "https://admin.example:8443"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://admin.example:8443"
    for stranger in ("https://evil.example", "https://ui.example.evil.example", "null", "http://ui.example"):
        response = client.get("/health/live", headers={"Origin": stranger})
        assert "Access-Control-Allow-Origin" not in response.headers, stranger


def test_cors_lets_a_browser_client_send_and_read_the_request_id(make_app: Any) -> None:
    """Every answer carries X-Request-ID, the id its log lines share, but a cross-origin script
    reads only the headers CORS exposes: it could neither read the id nor send its own."""
    client = make_app(cors_origins="https://ui.example").test_client()
    preflight = _preflight(client, "https://ui.example", "authorization, content-type, x-request-id")
    assert "X-Request-ID" in preflight.headers["Access-Control-Allow-Headers"].split(", ")
    answer = client.get("/health/live", headers={"Origin": "https://ui.example", "X-Request-ID": "ui-42"})
    assert answer.headers["X-Request-ID"] == "ui-42"
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"].split(", ")


def test_options_is_204_with_allow_and_no_html_content_type(make_app: Any) -> None:
    """OPTIONS answered Flask's default: 200 with an empty ``text/html`` body. A JSON API's
    OPTIONS is ``204 No Content`` with ``Allow``, on every route; a CORS preflight likewise."""
    client = make_app(cors_origins="https://ui.example").test_client()
    rules = {"/": "GET", "/health/live": "GET", "/api/login": "POST", "/api/recommend": "POST",
             "/api/users/1/features": "GET", "/docs": "GET"}  # fmt: skip
    for path, method in rules.items():
        for headers in ({}, {"Origin": "https://ui.example", "Access-Control-Request-Method": method}):
            response = client.options(path, headers=headers)
            assert response.status_code == 204, (path, response.status_code)
            assert response.data == b"" and "Content-Type" not in response.headers, (path, response.headers)
            assert {method, "OPTIONS"} <= {m.strip() for m in response.headers["Allow"].split(",")}, path
            if headers:
                assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example", path
                assert method in response.headers["Access-Control-Allow-Methods"], path
    # what is not an OPTIONS of a route is as it was
    assert client.options("/api/nothing-here").status_code == 404
    assert client.head("/health/live").status_code == 200
    assert client.get("/health/live").mimetype == "application/json"
