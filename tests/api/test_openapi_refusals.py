"""/openapi.json documents the refusals every JSON endpoint really gives, and the user id's type.

Every POST under /api/ reads a JSON body: a body over the limit is 413 ``payload_too_large`` and
a non-JSON content type is 415, on every one of them (app/api/__init__.py), but the spec listed
413 only for the two bulk endpoints and 415 nowhere. ``/api/users/<user_id>/...`` accepts only a
positive integer id (anything else is 400 naming ``user_id``) yet documented it as any string.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.recommender.features import MAX_ID
from tests.helpers import login

pytestmark = pytest.mark.api


def test_every_json_endpoint_documents_413_and_415_and_gives_them(client: Any, auth_headers: dict) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    posts = [path for path, methods in paths.items() if "post" in methods]
    assert len(posts) >= 10
    for path in posts:
        responses = paths[path]["post"]["responses"]
        assert {"413", "415"} <= set(responses), (path, sorted(responses))
        too_large = client.post(
            path,
            data=b'{"x": "' + b"x" * 3 * 1024 * 1024 + b'"}',
            headers={**auth_headers, "Content-Type": "application/json"},
        )
        assert too_large.status_code == 413, (path, too_large.status_code)
        not_json = client.post(path, data=b"x=1", headers={**auth_headers, "Content-Type": "text/plain"})
        assert not_json.status_code == 415, (path, not_json.status_code)


def test_every_json_endpoint_documents_411_and_gives_it(app: Any, client: Any, auth_headers: dict) -> None:
    """A chunked body the server does not pass on (uwsgi's router: docs/serving.md) is a 411 on
    every POST, before anything else looks at the request; the spec did not list it."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    paths = client.get("/openapi.json").get_json()["paths"]
    for path in [path for path, methods in paths.items() if "post" in methods]:
        assert "411" in paths[path]["post"]["responses"], (path, sorted(paths[path]["post"]["responses"]))
        headers = {**auth_headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        environ = EnvironBuilder(path=path, method="POST", headers=headers).get_environ()
        environ.pop("CONTENT_LENGTH", None)
        app_iter, status, _headers = run_wsgi_app(app, environ)
        b"".join(app_iter)
        assert status.startswith("411"), (path, status)


def test_the_user_id_path_parameter_is_documented_as_the_positive_integer_it_must_be(client: Any) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in ("/api/users/{user_id}/features", "/api/users/{user_id}/recommendations"):
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["in"] == "path"]
        assert param["name"] == "user_id"
        assert param["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_ID}


def test_the_reload_version_is_documented_as_the_bundle_name_it_must_be(client: Any) -> None:
    """The spec let ``version`` be any text of 1 to 128 characters, and a fuzzer's schema-valid
    ``"..x"`` or ``"é"`` was refused (400 "invalid version"): the spec states the bundle-name rule."""
    from tests.helpers import ADMIN_PASSWORD

    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    version = schemas["ReloadRequest"]["properties"]["version"]
    (text,) = [choice for choice in version["anyOf"] if choice.get("type") == "string"]
    pattern = re.compile(text["pattern"])  # fullmatch below: a JSON Schema "$" is the end of the text
    admin = login(client, ADMIN_PASSWORD)
    for name in ("..", "../x", ".hidden", "-x", "_x", "a/b", "v 1", "é", "v1\n", "\u0000"):
        assert pattern.fullmatch(name) is None, name
        response = client.post("/api/admin/reload", json={"version": name}, headers=admin)
        assert response.status_code == 400, (name, response.get_json())
    for name in ("no-such-bundle", "20261205T120000-abc123", "v1.2_3"):
        assert pattern.fullmatch(name) is not None, name
        response = client.post("/api/admin/reload", json={"version": name}, headers=admin)
        assert response.status_code == 404, (name, response.get_json())


def _get_paths(client: Any) -> dict[str, list[str]]:
    """Every documented GET, as a request path (``user_id`` 1), with the query parameters it documents."""
    paths = client.get("/openapi.json").get_json()["paths"]
    return {
        path.replace("{user_id}", "1"): [
            p["name"] for p in methods["get"].get("parameters", []) if p["in"] == "query"
        ]
        for path, methods in paths.items()
        if "get" in methods
    }


def test_every_api_get_refuses_a_query_parameter_it_does_not_take(client: Any, auth_headers: dict) -> None:
    """Unknown parameters are a 400 naming them, as unknown body fields are: an ``/api/`` GET that
    takes none (``/api/users/<id>/features``, ``/api/model``) used to answer as if the query
    string were not there, while ``/api/users/<id>/recommendations`` refused ``?foo=1``."""
    gets = {path: documented for path, documented in _get_paths(client).items() if path.startswith("/api/")}
    assert len(gets) >= 3
    assert gets["/api/users/1/recommendations"] == ["max_recs"]
    for path, documented in gets.items():
        plain = client.get(path, headers=auth_headers)
        assert plain.status_code == 200, (path, plain.status_code)
        assert client.head(path, headers=auth_headers).status_code == 200, path
        for method in ("GET", "HEAD"):
            refused = client.open(f"{path}?colour=blue&max_recs=3", method=method, headers=auth_headers)
            assert refused.status_code == 400, (method, path, refused.status_code)
        body = client.get(f"{path}?colour=blue", headers=auth_headers).get_json()
        assert body["error"]["code"] == "invalid_request", path
        assert body["error"]["fields"] == {"colour": "unknown field"}, path
        assert "colour" in body["error"]["message"], path
        if not documented:  # ``max_recs`` is a parameter of its own only where it is documented
            assert client.get(f"{path}?max_recs=3", headers=auth_headers).status_code == 400, path
        else:
            assert client.get(f"{path}?max_recs=3", headers=auth_headers).status_code == 200, path


def test_every_api_post_refuses_a_query_parameter(client: Any, auth_headers: dict) -> None:
    """A POST under /api/ documents no query parameter, and ignored any: ``POST
    /api/recommend?max_recs=3`` answered 10 movies, ``/api/login?session_password=...`` logged in
    from the body with the query's password in every access log on the way. 400 naming it, as an
    unknown body field is and as the GETs do."""
    from tests.helpers import ADMIN_PASSWORD

    admin = login(client, ADMIN_PASSWORD)
    paths = client.get("/openapi.json").get_json()["paths"]
    posts = [path for path, methods in paths.items() if "post" in methods and path.startswith("/api/")]
    assert len(posts) >= 10
    for path in posts:
        assert not [p for p in paths[path]["post"].get("parameters", []) if p["in"] == "query"], path
        headers = admin if path.startswith("/api/admin/") else auth_headers
        body = {"session_password": "x"} if path == "/api/login" else {}
        refused = client.post(f"{path}?max_recs=3", json=body, headers=headers)
        assert refused.status_code == 400, (path, refused.status_code, refused.get_json())
        assert refused.get_json()["error"]["fields"].get("max_recs") == "unknown field", path
    answered = client.post("/api/recommend", json={"age": 30, "gender": "M", "occupation": "programmer"},
                           headers=auth_headers)  # fmt: skip
    assert answered.status_code == 200  # no query string: as before


def test_the_seed_pages_probes_and_metrics_ignore_a_query_string(client: Any, auth_headers: dict) -> None:
    """What probes, scrapers and links add to a URL (a cache buster, tracking parameters) must not
    turn ``/``, ``/protected``, the health probes or ``/metrics`` into a 400."""
    tolerant = [path for path in _get_paths(client) if not path.startswith("/api/")]
    assert {"/", "/protected", "/health/live", "/health/ready", "/metrics"} <= set(tolerant)
    for path in tolerant:
        for method in ("GET", "HEAD"):
            answer = client.open(f"{path}?_=1733350000&utm_source=mail", method=method, headers=auth_headers)
            assert answer.status_code == 200, (method, path, answer.status_code)


def test_a_cors_preflight_of_a_get_with_a_query_string_is_still_answered(make_app: Any) -> None:
    """The preflight carries the query string of the request it asks about: it is answered as
    before, and the refusal of the real request is readable by the allowed origin."""
    origin = "https://app.example"
    client = make_app(cors_origins=origin).test_client()
    headers = login(client)
    for path in _get_paths(client):
        preflight = client.options(
            f"{path}?colour=blue",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "Authorization"},
        )  # fmt: skip
        assert preflight.status_code == 204, (path, preflight.status_code)
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        if path.startswith("/api/"):
            refused = client.get(f"{path}?colour=blue", headers={**headers, "Origin": origin})
            assert refused.status_code == 400, path
            assert refused.headers["Access-Control-Allow-Origin"] == origin, path


def test_every_operation_has_a_summary_of_its_own(client: Any) -> None:
    """/docs showed ``index <GET>``, ``protected <GET>`` and ``login <POST>``: spectree's stand-in
    (function name and method) for a view without a docstring."""
    paths = client.get("/openapi.json").get_json()["paths"]
    for path, methods in paths.items():
        for method, operation in methods.items():
            summary = operation.get("summary") or ""
            assert summary, (method, path)
            assert not summary.endswith(f"<{method.upper()}>"), (method, path, summary)
    page = client.get("/docs").get_data(as_text=True)
    assert "&lt;GET&gt;" not in page and "&lt;POST&gt;" not in page


def test_what_ignores_a_query_string_documents_no_400(client: Any, auth_headers: dict) -> None:
    """spectree lists its validation status (400) on every operation, but the seed's pages, the
    health probes and ``/metrics`` take no body and ignore a query string: they never answer 400,
    and their documentation should not tell a client to handle one."""
    paths = client.get("/openapi.json").get_json()["paths"]
    tolerant = [path for path in _get_paths(client) if not path.startswith("/api/")]
    assert {"/", "/protected", "/health/live", "/health/ready", "/metrics"} <= set(tolerant)
    for path in tolerant:
        assert "400" not in paths[path]["get"]["responses"], (path, sorted(paths[path]["get"]["responses"]))
    # what can answer 400 still says so: an /api/ GET refuses unknown query parameters, a POST a bad body
    assert "400" in paths["/api/model"]["get"]["responses"]
    assert "400" in paths["/api/users/{user_id}/features"]["get"]["responses"]
    assert "400" in paths["/api/login"]["post"]["responses"]


def test_the_docs_page_shows_parameters_and_response_schemas(client: Any) -> None:
    """/docs named each request body's schema but neither the path and query parameters
    (``max_recs`` of ``/api/users/{user_id}/recommendations`` appeared nowhere on the page) nor
    what a status answers with: the page is what a person reads, the spec what a client reads."""
    import re

    page = client.get("/docs").get_data(as_text=True)
    users = r'<section class="op" id="GET-/api/users/\{user_id\}/recommendations">(.*?)</section>'
    section = re.search(users, page, re.S)
    assert section, "no section for GET /api/users/{user_id}/recommendations"
    text = section.group(1)
    assert "<code>user_id</code>" in text and "path" in text and "1..2147483647" in text
    assert "<code>max_recs</code>" in text and "query" in text and "1..100" in text and "default 10" in text
    recommend = re.search(r'<section class="op" id="POST-/api/recommend">(.*?)</section>', page, re.S)
    assert recommend
    assert 'href="#schema-RecommendResponse"' in recommend.group(1)
    assert 'href="#schema-ErrorResponse"' in recommend.group(1)
    assert 'id="schema-RecommendResponse"' in page and 'id="schema-ErrorResponse"' in page
    assert set(re.findall(r'href="#schema-([^"]+)"', page)) <= set(re.findall(r'id="schema-([^"]+)"', page))
