"""/openapi.json tells a client every answer the handlers give: route, status, error code, headers.

The spec listed each operation's statuses but none of the headers a client must act on (the
``WWW-Authenticate`` challenge of every 401, ``Retry-After`` of a 429 and of the 503s that say
when to retry) and not which ``error.code`` a status carries: a client of ``/api/admin/reload``
could not tell from it that a 409 is ``reload_in_progress`` (retry later) or ``reload_superseded``
(another bundle won), nor that its 503 is ``reload_incomplete``.

The test walks the app's URL map (every route is an operation of the spec, bar the pages and the
spec itself) and provokes, on every operation, the answers the handlers and the hooks before them
give: no token, a refused token, a client token where an admin one is needed, each kind of bad
body, no model loaded, the database down, a full journal disk, a failing breaker store, the login
limit, the /metrics guards and every refusal of a reload. Each answer's status, envelope code and
``Retry-After``/``WWW-Authenticate`` must be documented for that operation.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.helpers import ADMIN_PASSWORD, PROFILE, SESSION_PASSWORD, login

pytestmark = pytest.mark.api

# Not API operations: the HTML pages (the web UI, /docs), static files and the spec documents.
UNDOCUMENTED_ENDPOINTS = {"static", "docs.docs", "docs.openapi", "openapi_apidoc"}
UNDOCUMENTED_BLUEPRINTS = {"ui"}
DOCUMENTED_HEADERS = ("Accept-Encoding", "Retry-After", "WWW-Authenticate")

RECORD = {**PROFILE, "movie_id": 1}
BODIES: dict[str, Any] = {
    "/api/login": {"session_password": SESSION_PASSWORD},
    "/api/recommend": PROFILE,
    "/api/recommend/score": {"id": "not-issued-here", "movie": "Toy Story (1995)", "score": 4},
    "/api/recommend/batch": {"requests": [PROFILE]},
    "/api/predict/stream": RECORD,
    "/api/predict/batch": {"instances": [RECORD]},
    "/api/echo": {"a": 1},
}


def _operations(app: Any) -> Iterator[tuple[str, str, str]]:
    """(method, request path, spec path) of every API route of ``app``'s URL map; user id 1."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in UNDOCUMENTED_ENDPOINTS or rule.endpoint.split(".")[0] in UNDOCUMENTED_BLUEPRINTS:
            continue
        spec_path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method.lower(), rule.rule.replace("<user_id>", "1"), spec_path


class Answers:
    """Every answer given, checked against the spec of the operation that gave it."""

    def __init__(self, paths: dict[str, Any]) -> None:
        self.paths = paths
        self.undocumented: list[str] = []
        self.seen: set[tuple[str, str, int, str | None]] = set()

    def check(self, method: str, spec_path: str, status: int, headers: Any, body: Any) -> None:
        where = f"{method.upper()} {spec_path} {status}"
        responses = self.paths.get(spec_path, {}).get(method, {}).get("responses", {})
        documented = responses.get(str(status))
        code = (
            body["error"]["code"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
        )
        self.seen.add((method, spec_path, status, code))
        if documented is None:
            self.undocumented.append(f"{where}: status not documented (documents {sorted(responses)})")
            return
        if code is not None and code not in documented.get("x-error-codes", []):
            self.undocumented.append(f"{where}: error code {code!r} not in {documented.get('x-error-codes')}")
        for name in DOCUMENTED_HEADERS:
            if name in headers and name not in documented.get("headers", {}):
                self.undocumented.append(f"{where}: header {name} not documented")

    def response(self, method: str, spec_path: str, response: Any) -> Any:
        body = response.get_json(silent=True) if response.is_json else None
        self.check(method, spec_path, response.status_code, response.headers, body)
        return response


def _call(client: Any, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> Any:
    if method == "post" and "data" not in kwargs and "json" not in kwargs:
        kwargs["json"] = BODIES.get(path, {})
    return client.open(path, method=method.upper(), headers=headers, **kwargs)


def _token_for(path: str, client_token: dict[str, str], admin: dict[str, str]) -> dict[str, str]:
    return admin if path.startswith("/api/admin/") else client_token


def _valid_calls(app: Any, answers: Answers) -> None:
    """Each operation as a client would call it (admin token for /api/admin/), all answers checked."""
    client = app.test_client()
    client_token, admin = login(client), login(client, ADMIN_PASSWORD)
    for method, path, spec_path in _operations(app):
        if path == "/api/logout":
            continue  # would end the token the other calls use: called last, below
        answers.response(
            method, spec_path, _call(client, method, path, _token_for(path, client_token, admin))
        )
    answers.response("post", "/api/logout", _call(client, "post", "/api/logout", client_token))


def test_every_route_is_in_the_spec(app: Any, client: Any) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    operations = list(_operations(app))
    assert len(operations) >= 18
    missing = [
        f"{method.upper()} {spec_path}"
        for method, _, spec_path in operations
        if method not in paths.get(spec_path, {})
    ]
    assert not missing
    for path, spec_path in (("/", "/"), ("/api/admin/reload", "/api/admin/reload")):
        assert any(p == path and s == spec_path for _, p, s in operations)


def _refuse_bodies(app: Any, client: Any, answers: Answers, path: str, spec_path: str, headers: dict) -> None:
    """Every kind of body (and query) a POST under /api/ refuses, each answer checked."""
    json_type = {**headers, "Content-Type": "application/json"}
    for kwargs in (
        {"data": b"x=1", "headers": {**headers, "Content-Type": "text/plain"}},
        {"data": gzip.compress(b"{}"), "headers": {**json_type, "Content-Encoding": "gzip"}},
        {"data": b"{not json", "headers": json_type},
        {"data": b"[1]", "headers": json_type},
        {"data": b'{"x": "' + b"x" * 3 * 1024 * 1024 + b'"}', "headers": json_type},
        {"json": {"unknown_field": 1}, "headers": headers},
    ):
        answers.response("post", spec_path, client.open(path, method="POST", **kwargs))
    query = client.post(f"{path}?colour=blue", json=BODIES.get(path, {}), headers=headers)
    answers.response("post", spec_path, query)
    # a chunked body the server does not pass on (uwsgi's router): no Content-Length, no stream end
    chunked = {**json_type, "Transfer-Encoding": "chunked"}
    environ = EnvironBuilder(path=path, method="POST", headers=chunked).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    app_iter, status, response_headers = run_wsgi_app(app, environ)
    body = orjson.loads(b"".join(app_iter))
    answers.check("post", spec_path, int(status.split()[0]), Headers(response_headers), body)


def test_every_refusal_of_a_request_is_documented(app: Any, client: Any) -> None:
    """No token, a refused token, a client token on an admin route, and every kind of bad request."""
    answers = Answers(client.get("/openapi.json").get_json()["paths"])
    client_token = login(client)
    forged = {"Authorization": "Bearer not.a.token"}
    # /api/logout last, and its call with a valid token after its refusals: it ends the token
    for method, path, spec_path in sorted(_operations(app), key=lambda op: op[1] == "/api/logout"):
        headers = _token_for(path, client_token, client_token)  # client token: admin routes refuse it
        for sent in ({}, forged, {**headers, "X-Padding": "p" * 20 * 1024}):  # the last: headers over 16 KiB
            answers.response(method, spec_path, _call(client, method, path, sent))
        if method == "get":
            answers.response(method, spec_path, client.get(f"{path}?colour=blue", headers=headers))
        else:
            _refuse_bodies(app, client, answers, path, spec_path, headers)
        answers.response(method, spec_path, _call(client, method, path, headers))
    assert not answers.undocumented, "\n".join(answers.undocumented)
    codes = {status for *_, status, _ in answers.seen}
    assert {400, 401, 403, 411, 413, 415, 431} <= codes, sorted(codes)


def test_every_answer_of_a_healthy_service_and_of_no_model_is_documented(
    make_app: Any, tmp_path: Any
) -> None:
    app = make_app()
    answers = Answers(app.test_client().get("/openapi.json").get_json()["paths"])
    _valid_calls(app, answers)
    _valid_calls(make_app(model_path=tmp_path / "empty"), answers)
    assert not answers.undocumented, "\n".join(answers.undocumented)
    assert ("post", "/api/recommend", 503, "unavailable") in answers.seen
    assert ("get", "/health/ready", 503, "unavailable") in answers.seen


def test_every_answer_with_the_database_down_or_the_disk_full_is_documented(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import contextmanager

    from app.storage.db import DatabaseUnavailableError

    app = make_app()
    services = app.extensions["movierec"]
    answers = Answers(app.test_client().get("/openapi.json").get_json()["paths"])

    @contextmanager
    def down(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise DatabaseUnavailableError("connection refused")
        yield  # pragma: no cover

    client = app.test_client()
    headers = login(client)  # before the outage: login needs no database, but keep it simple
    monkeypatch.setattr(services.db, "session", down)
    monkeypatch.setattr(services.db, "ping", lambda: False)
    services.recommendations.request_log.max_pending = 0  # the write-behind backlog is full
    _valid_calls(app, answers)
    answers.response(
        "post",
        "/api/recommend/score",
        client.post("/api/recommend/score", json=BODIES["/api/recommend/score"], headers=headers),
    )
    monkeypatch.undo()
    services.recommendations.request_log.max_pending = 50_000
    monkeypatch.setattr(
        services.recommendations.feedback, "disk_problem", lambda: "the journal's disk is full"
    )
    answers.response("get", "/health/ready", client.get("/health/ready"))
    assert not answers.undocumented, "\n".join(answers.undocumented)
    assert ("get", "/health/ready", 503, "unavailable") in answers.seen
    assert ("post", "/api/recommend", 503, "unavailable") in answers.seen


def test_every_refusal_of_a_reload_and_of_a_breaker_reset_is_documented(
    app: Any, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import reload
    from app.storage.breaker import BreakerStoreError

    answers = Answers(client.get("/openapi.json").get_json()["paths"])
    admin = login(client, ADMIN_PASSWORD)
    services = app.extensions["movierec"]
    for version in ("no-such-bundle", "../x"):
        answers.response(
            "post",
            "/api/admin/reload",
            client.post("/api/admin/reload", json={"version": version}, headers=admin),
        )
    for error in (
        reload.ReloadInProgress("v2"),
        reload.ReloadSuperseded("a newer reload of v3 was started"),
        reload.ReloadIncomplete("1 of 2 workers refused the bundle"),
        reload.InvalidBundle("the bundle failed validation"),
    ):

        def refuse(*_args: Any, error: Exception = error, **_kwargs: Any) -> Any:
            raise error

        monkeypatch.setattr(services.reloader, "request", refuse)
        answers.response(
            "post", "/api/admin/reload", client.post("/api/admin/reload", json={"wait": True}, headers=admin)
        )
    answers.response(
        "post",
        "/api/admin/breaker/reset",
        client.post("/api/admin/breaker/reset", json={"model_version": "never-served"}, headers=admin),
    )

    def store_down(*_args: Any, **_kwargs: Any) -> Any:
        raise BreakerStoreError("the breaker store is unreachable")

    monkeypatch.setattr(services.breaker, "reset", store_down)
    answers.response(
        "post", "/api/admin/breaker/reset", client.post("/api/admin/breaker/reset", json={}, headers=admin)
    )
    monkeypatch.setattr(services, "breaker", None)
    answers.response(
        "post", "/api/admin/breaker/reset", client.post("/api/admin/breaker/reset", json={}, headers=admin)
    )
    assert not answers.undocumented, "\n".join(answers.undocumented)
    seen = {(status, code) for method, path, status, code in answers.seen if path == "/api/admin/reload"}
    assert {
        (409, "reload_in_progress"),
        (409, "reload_superseded"),
        (503, "reload_incomplete"),
        (422, "invalid_bundle"),
        (404, "not_found"),
        (400, "invalid_request"),
    } <= seen
    reset = {
        (status, code) for method, path, status, code in answers.seen if path == "/api/admin/breaker/reset"
    }
    assert {(404, "not_found"), (503, "unavailable")} <= reset


def test_the_login_limit_and_the_metrics_guards_are_documented(make_app: Any) -> None:
    app = make_app(login_rate_limit="2 per minute", metrics_token="a-scraper-token-of-enough-length-1234")
    client = app.test_client()
    answers = Answers(client.get("/openapi.json").get_json()["paths"])
    for _ in range(4):
        answers.response("post", "/api/login", client.post("/api/login", json={"session_password": "wrong"}))
    answers.response("get", "/metrics", client.get("/metrics"))
    answers.response("get", "/metrics", client.get("/metrics", headers={"Authorization": "Bearer wrong"}))
    guarded = make_app(metrics_allow_cidrs="192.0.2.0/24").test_client()
    answers.response("get", "/metrics", guarded.get("/metrics"))
    assert not answers.undocumented, "\n".join(answers.undocumented)
    assert {(status, code) for *_, status, code in answers.seen} >= {
        (401, "unauthorized"),
        (429, "rate_limited"),
        (403, "forbidden"),
    }


def _answers_on_page(page: str, operation: str) -> dict[str, str]:
    """The response items of ``operation``'s section of /docs, by status."""
    import re

    section = re.search(rf'<section class="op" id="{re.escape(operation)}">(.*?)</section>', page, re.S)
    assert section, operation
    items = re.findall(r"<li><code>(\d{3})</code>(.*?)</li>", section.group(1), re.S)
    return dict(items)


def test_the_docs_page_names_the_headers_and_codes_of_each_answer(client: Any) -> None:
    """/docs is what a person reads: it shows each error status's codes and headers too."""
    page = client.get("/docs").get_data(as_text=True)
    reload = _answers_on_page(page, "POST-/api/admin/reload")
    assert "reload_in_progress" in reload["409"] and "reload_superseded" in reload["409"]
    assert "reload_incomplete" in reload["503"] and "Retry-After" not in reload["503"]
    assert "headers <code>WWW-Authenticate</code>" in reload["401"]
    assert "headers <code>Retry-After</code>" in _answers_on_page(page, "POST-/api/recommend")["503"]
    assert "headers <code>Retry-After</code>" in _answers_on_page(page, "POST-/api/login")["429"]


def test_the_metrics_token_is_documented_as_the_optional_bearer_credential_it_is(make_app: Any) -> None:
    """/metrics answers 401 without the scraper's token when MOVIEREC_METRICS_TOKEN is set, but the
    spec named no credential for it: a client read a 401 it had no documented way to avoid."""
    document = make_app().test_client().get("/openapi.json").get_json()
    security = document["paths"]["/metrics"]["get"].get("security")
    assert security and {} in security, security  # none needed unless the setting is made
    (named,) = [requirement for requirement in security if requirement]
    (scheme,) = named
    assert document["components"]["securitySchemes"][scheme] == {"type": "http", "scheme": "bearer"}
    assert scheme != "bearer"  # not a token from /api/login
    token = "a-scraper-token-of-enough-length-1234"
    client = make_app(metrics_token=token).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    page = client.get("/docs").get_data(as_text=True)  # the lock marks a credential that is required
    assert "/metrics</code> 🔒" not in page and "/api/model</code> 🔒" in page


def test_the_metrics_body_is_documented_as_the_text_it_is(client: Any) -> None:
    """/metrics answers Prometheus text; its 200 was documented with no content at all."""
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    documented = client.get("/openapi.json").get_json()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert documented["content"] == {"text/plain": {"schema": {"type": "string"}}}
