"""Every answer is what /openapi.json declares for it: status, content type and body schema.

test_openapi_truth.py checks that each status, error code and header an operation gives is
listed; the fuzzer (test_fuzz.py) sends random bodies. This test sends, for every operation of
the spec, a valid request and the documented error cases on purpose (no token, a client token on
an admin route, bad and unknown fields, a body that is not JSON or too large, an unknown user, no
model loaded), and validates each real answer against the schema the spec declares for that
status (OpenAPI 3.1 schemas are JSON Schema 2020-12) and each valid request against the
operation's request schema. /api/recommend/batch and /api/model, /api/admin/reload are driven
through their states: mixed, duplicate and unknown-user items, the item limit, a reload waited
for and one still loading.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs
import pytest

from tests.helpers import ADMIN_PASSWORD, PROFILE, SESSION_PASSWORD, login

pytestmark = pytest.mark.api

RECORD = {**PROFILE, "movie_id": 1}
JSON_TYPE = {"Content-Type": "application/json"}


class Contract:
    """The spec of one app, and every answer checked against it (``problems`` says where not)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.paths: dict[str, Any] = document["paths"]
        self.problems: list[str] = []
        self.checked: set[tuple[str, str, int]] = set()

    def validator(self, schema: dict[str, Any]) -> Any:
        """A 2020-12 validator of ``schema`` whose ``#/components/...`` references resolve."""
        return jsonschema_rs.Draft202012Validator({**schema, "components": self.document["components"]})

    def schema_errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        return [f"{list(e.instance_path)}: {e.message}" for e in self.validator(schema).iter_errors(value)]

    def request_schema(self, method: str, path: str) -> dict[str, Any]:
        body = self.paths[path][method]["requestBody"]["content"]["application/json"]
        return body["schema"]  # type: ignore[no-any-return]

    def component(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(self, method: str, path: str, response: Any, sent: Any = None) -> Any:
        """Check ``response`` of ``method path`` (spec path) against the spec; return its JSON body."""
        status = response.status_code
        where = f"{method.upper()} {path} {status}"
        self.checked.add((method, path, status))
        operation = self.paths.get(path, {}).get(method)
        if operation is None:
            self.problems.append(f"{where}: no such operation in the spec")
            return None
        if sent is not None and "requestBody" in operation and status < 400:
            errors = self.schema_errors(self.request_schema(method, path), sent)
            if errors:
                self.problems.append(f"{where}: accepted a body its schema refuses: {errors}")
        documented = operation["responses"].get(str(status))
        if documented is None:
            self.problems.append(f"{where}: status not documented ({sorted(operation['responses'])})")
            return None
        for name, header in documented.get("headers", {}).items():
            if header.get("required") and name not in response.headers:
                self.problems.append(f"{where}: required header {name} missing")
            value = response.headers.get(name)
            if (
                value is not None
                and header.get("schema", {}).get("type") == "integer"
                and not value.isdigit()
            ):
                self.problems.append(f"{where}: header {name} {value!r} not an integer")
        content = documented.get("content", {})
        data = response.get_data()
        if not content:
            if data:
                self.problems.append(f"{where}: documents no content, answered {response.mimetype}")
            return None
        if response.mimetype not in content:
            self.problems.append(f"{where}: answered {response.mimetype}, documents {sorted(content)}")
            return None
        body = response.get_json() if response.is_json else response.get_data(as_text=True)
        errors = self.schema_errors(content[response.mimetype]["schema"], body)
        if errors:
            self.problems.append(f"{where}: body not as documented: {errors[:3]}")
        return body

    def call(self, client: Any, method: str, path: str, spec_path: str | None = None, **kwargs: Any) -> Any:
        """Send ``method path`` and check its answer against ``spec_path`` (``path`` by default)."""
        response = client.open(path, method=method.upper(), **kwargs)
        self.answer(method, spec_path or path, response, kwargs.get("json"))
        return response


def _contract(client: Any) -> Contract:
    return Contract(client.get("/openapi.json").get_json())


def _every_operation(contract: Contract) -> set[tuple[str, str]]:
    return {(method, path) for path, methods in contract.paths.items() for method in methods}


def test_a_valid_request_to_every_operation_answers_as_documented(app: Any, client: Any) -> None:
    contract = _contract(client)
    user, admin = login(client), login(client, ADMIN_PASSWORD)
    served = contract.call(client, "post", "/api/recommend", json=PROFILE, headers=user).get_json()
    score = {"id": served["id"], "movie": served["recommendations"][0], "score": 4.5}
    users, user_ = "/api/users/{user_id}", {"headers": user}
    calls: list[tuple[str, str, str | None, dict[str, Any]]] = [
        ("get", "/", None, {}),
        ("get", "/protected", None, {"headers": user}),
        ("post", "/api/login", None, {"json": {"session_password": SESSION_PASSWORD}}),
        ("post", "/api/recommend", None, {"json": {**PROFILE, "user_id": 1, "max_recs": None}, **user_}),
        ("post", "/api/recommend/score", None, {"json": score, "headers": user}),
        ("get", "/health/live", None, {}),
        ("get", "/health/ready", None, {}),
        ("get", "/metrics", None, {}),
        ("post", "/api/admin/breaker/reset", None, {"json": {"reason": "checked"}, "headers": admin}),
        ("post", "/api/predict/stream", None, {"json": RECORD, "headers": user}),
        ("post", "/api/predict/batch", None, {"json": {"instances": [RECORD, RECORD]}, "headers": user}),
        ("post", "/api/recommend/batch", None, {"json": {"requests": [PROFILE]}, "headers": user}),
        ("get", "/api/users/1/features", f"{users}/features", {"headers": user}),
        ("get", "/api/users/1/recommendations?max_recs=3", f"{users}/recommendations", {"headers": user}),
        ("get", "/api/model", None, {"headers": user}),
        ("get", "/api/model", None, {"headers": admin}),
        ("post", "/api/admin/reload", None, {"json": {"wait": True}, "headers": admin}),
        ("post", "/api/admin/reload", None, {"json": {}, "headers": admin}),
        ("post", "/api/echo", None, {"json": {"a": [1, {"b": None}]}, "headers": user}),
        ("post", "/api/logout", None, {"json": {}, "headers": login(client)}),
    ]  # fmt: skip
    for method, path, spec_path, kwargs in calls:
        response = contract.call(client, method, path, spec_path, **kwargs)
        assert response.status_code < 300, (method, path, response.status_code, response.get_data()[:300])
    assert not contract.problems, "\n".join(contract.problems)
    assert {(method, path) for method, path, _ in contract.checked} == _every_operation(contract)


def _bad_requests(contract: Contract, client: Any, user: dict[str, str], admin: dict[str, str]) -> None:
    """The documented refusals of every operation, each answer checked."""
    too_large = b'{"x": "' + b"x" * 3 * 1024 * 1024 + b'"}'
    for method, path in sorted(_every_operation(contract)):
        url = path.replace("{user_id}", "1")
        token = admin if path.startswith("/api/admin/") else user
        contract.call(client, method, url, path, headers={"Authorization": "Bearer not.a.token"})
        contract.call(client, method, url, path)  # no token
        if path.startswith("/api/admin/"):
            contract.call(client, method, url, path, json={}, headers=user)  # a client token: 403
        if method == "get":
            if path.startswith("/api/"):
                contract.call(client, method, f"{url}?colour=blue", path, headers=token)
            continue
        for kwargs in (
            {"json": {"colour": "blue"}},
            {"data": b"{not json", "headers": JSON_TYPE},
            {"data": b"[1]", "headers": JSON_TYPE},
            {"data": b"x=1", "headers": {"Content-Type": "text/plain"}},
            {"data": too_large, "headers": JSON_TYPE},
        ):
            headers = {**kwargs.pop("headers", {}), **token}
            contract.call(client, method, url, path, headers=headers, **kwargs)
    for path in ("/api/users/0/features", "/api/users/x/recommendations", "/api/users/999999/features"):
        contract.call(client, "get", path, path.replace(path.split("/")[3], "{user_id}"), headers=user)
    contract.call(client, "get", "/api/users/1/recommendations?max_recs=0",
                  "/api/users/{user_id}/recommendations", headers=user)  # fmt: skip
    for body in ({**PROFILE, "age": 0}, {"gender": "M"}, {"user_id": 999_999}, {**PROFILE, "max_recs": 101}):
        contract.call(client, "post", "/api/recommend", json=body, headers=user)
    for body in ({"id": "never-issued", "movie": "x", "score": 3}, {"id": "x", "movie": "x", "score": 9}):
        contract.call(client, "post", "/api/recommend/score", json=body, headers=user)
    contract.call(client, "post", "/api/predict/stream", json={**RECORD, "movie_id": 999_999}, headers=user)
    contract.call(client, "post", "/api/predict/batch", json={"instances": [RECORD, {}]}, headers=user)
    contract.call(client, "post", "/api/login", json={"session_password": "wrong"})
    for body in ({"version": "no-such-bundle"}, {"version": "../x"}, {"wait": "yes"}):
        contract.call(client, "post", "/api/admin/reload", json=body, headers=admin)
    unknown = {"model_version": "never-served"}
    contract.call(client, "post", "/api/admin/breaker/reset", json=unknown, headers=admin)


def test_every_documented_refusal_answers_as_documented(client: Any) -> None:
    contract = _contract(client)
    _bad_requests(contract, client, login(client), login(client, ADMIN_PASSWORD))
    assert not contract.problems, "\n".join(contract.problems)
    statuses = {status for *_, status in contract.checked}
    assert {400, 401, 403, 404, 413, 415} <= statuses, sorted(statuses)


def test_without_a_model_every_answer_is_as_documented(make_app: Any, tmp_path: Any) -> None:
    """No bundle loaded: what needs one is a 503 in the envelope, as documented; the rest answers."""
    client = make_app(model_path=tmp_path / "empty").test_client()
    contract = _contract(client)
    user = login(client)
    for path, body in (
        ("/api/recommend", PROFILE),
        ("/api/recommend/batch", {"requests": [PROFILE]}),
        ("/api/predict/stream", RECORD),
        ("/api/predict/batch", {"instances": [RECORD]}),
    ):
        assert contract.call(client, "post", path, json=body, headers=user).status_code == 503
    assert contract.call(client, "get", "/api/model", headers=user).status_code == 503
    assert contract.call(client, "get", "/health/ready").status_code == 503
    path = "/api/users/{user_id}/recommendations"
    recs = contract.call(client, "get", path.replace("{user_id}", "1"), path, headers=user)
    assert recs.status_code == 503
    assert not contract.problems, "\n".join(contract.problems)


@pytest.fixture
def personal_app(make_app: Any, personal_model_store: Any) -> Any:
    return make_app(model_path=personal_model_store, model_dir=personal_model_store)


def test_each_batch_item_is_a_recommend_answer_or_an_error_envelope_as_documented(personal_app: Any) -> None:
    """results[i] answers requests[i] with what /api/recommend answers that body: the spec says
    which two shapes an item takes, and each item is one of them."""
    client = personal_app.test_client()
    contract = _contract(client)
    user = login(client)
    known = int(personal_app.extensions["movierec"].models.require().tables.user_ids[0])
    requests: list[Any] = [
        PROFILE,
        PROFILE,  # a duplicate: answered again, under an id of its own
        {"user_id": known, "max_recs": 2},
        {"user_id": 999_999},  # unknown to the model, without demographics: not_found
        {"user_id": 999_999, **PROFILE},  # unknown, with demographics: their segment
        {**PROFILE, "age": 0},
        {**PROFILE, "colour": "red"},
        {"gender": "M"},
        5,
        None,
        [PROFILE],
    ]
    batch = {"requests": requests}
    response = contract.call(client, "post", "/api/recommend/batch", json=batch, headers=user)
    assert response.status_code == 200
    body = response.get_json()
    results = body["results"]
    assert len(results) == len(requests) and (body["succeeded"], body["failed"]) == (4, 7)
    one = contract.component("RecommendResponse")
    error = contract.component("ErrorResponse")
    schemas = contract.document["components"]["schemas"]
    item = schemas["RecommendBatchResponse"]["properties"]["results"]["items"]
    for index, (sent, result) in enumerate(zip(requests, results, strict=True)):
        alone = client.post("/api/recommend", data=json.dumps(sent), headers={**user, **JSON_TYPE})
        expected = one if alone.status_code == 200 else error
        assert not contract.schema_errors(expected, result), (index, result)
        assert not contract.schema_errors(item, result), (index, result)
        if alone.status_code != 200:
            assert result == alone.get_json(), index  # the error /api/recommend gives that body
    assert results[0]["id"] != results[1]["id"] and results[0]["items"] == results[1]["items"]
    assert results[3]["error"]["code"] == "not_found" and results[4]["strategy"] == "segment"
    # the spec says what an item is: not any object
    for not_an_item in ({}, {"colour": "red"}, {"error": {"code": "not_found"}}, {"recommendations": []}):
        assert contract.schema_errors(item, not_an_item), not_an_item
    assert not contract.problems, "\n".join(contract.problems)


def test_the_batch_limits_are_the_documented_ones(client: Any) -> None:
    contract = _contract(client)
    user = login(client)
    schema = contract.request_schema("post", "/api/recommend/batch")
    for count, status in ((1_000, 200), (1_001, 400), (0, 400)):
        body = {"requests": [PROFILE] * count}
        assert bool(contract.schema_errors(schema, body)) == (status == 400), count
        answer = contract.call(client, "post", "/api/recommend/batch", json=body, headers=user)
        assert answer.status_code == status, count
    assert not contract.problems, "\n".join(contract.problems)


def test_model_and_reload_answer_as_documented_in_each_state(app: Any, client: Any) -> None:
    """/api/model for a client and an admin, before and after reloads; a reload still loading
    (202) and one waited for (200), each as documented."""
    contract = _contract(client)
    user, admin = login(client), login(client, ADMIN_PASSWORD)
    before = contract.call(client, "get", "/api/model", headers=admin).get_json()
    started = contract.call(client, "post", "/api/admin/reload", json={}, headers=admin)
    assert started.status_code in (200, 202)
    waited = contract.call(client, "post", "/api/admin/reload", json={"wait": True}, headers=admin)
    assert waited.status_code == 200 and waited.get_json()["state"] == "loaded"
    named = {"version": before["model_version"], "wait": True}
    assert contract.call(client, "post", "/api/admin/reload", json=named, headers=admin).status_code == 200
    for headers in (user, admin):
        info = contract.call(client, "get", "/api/model", headers=headers).get_json()
        assert info["model_version"] == before["model_version"]
    assert not contract.problems, "\n".join(contract.problems)
    # what a client polls after a 202: the spec says /api/model's ``reload`` is the reload's status
    # (``state`` and the rest, as the reload answers it) and ``breaker`` the breaker's, as the
    # reset answers it; it said any object for both
    model = contract.document["components"]["schemas"]["ModelInfo"]["properties"]
    assert contract.schema_errors(model["reload"], {}), "reload: a status without a state is documented"
    assert contract.schema_errors(model["reload"], {"state": 1}), "reload: the state is not text"
    assert contract.schema_errors(model["breaker"], {"reason": "x"}), "breaker: no state, no thresholds"
    info = client.get("/api/model", headers=admin).get_json()
    reset = contract.call(client, "post", "/api/admin/breaker/reset", json={}, headers=admin).get_json()
    assert set(info["breaker"]) == set(reset)
    assert set(info["reload"]) <= set(waited.get_json())


def test_a_body_is_required_exactly_where_the_spec_says(client: Any) -> None:
    """A POST sent without a body is taken where every body field is optional (/api/logout,
    /api/admin/reload, /api/admin/breaker/reset: docs/serving.md "or no body") and refused (415)
    everywhere else; the spec's ``requestBody.required`` must say which, or a client built from it
    (or a gateway validating against it) insists on a body the service does not need."""
    contract = _contract(client)
    admin = login(client, ADMIN_PASSWORD)
    posts = sorted(path for method, path in _every_operation(contract) if method == "post")
    assert len(posts) >= 10
    optional = set()
    for path in posts:
        headers = admin if path.startswith("/api/admin/") else login(client)  # logout ends its token
        answer = contract.call(client, "post", path, headers=headers)
        if answer.status_code < 400:
            optional.add(path)
        else:
            assert answer.status_code == 415, (path, answer.status_code)
        assert contract.paths[path]["post"]["requestBody"].get("required", False) == (path not in optional), (
            path
        )
    assert optional == {"/api/logout", "/api/admin/reload", "/api/admin/breaker/reset"}
    assert not contract.problems, "\n".join(contract.problems)
    page = client.get("/docs").get_data(as_text=True)  # and /docs, what a person reads, says so
    for path in posts:
        section = re.search(rf'<section class="op" id="POST-{re.escape(path)}">(.*?)</section>', page, re.S)
        assert section, path
        (body,) = re.findall(r"<p>Body: (.*?)</p>", section.group(1))
        assert ("optional" in body) == (path in optional), (path, body)


def test_the_login_limit_and_the_metrics_guards_answer_as_documented(make_app: Any) -> None:
    token = "a-scraper-token-of-enough-length-1234"
    client = make_app(login_rate_limit="2 per minute", metrics_token=token).test_client()
    contract = _contract(client)
    statuses = [
        contract.call(client, "post", "/api/login", json={"session_password": "wrong"}).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    assert contract.call(client, "get", "/metrics").status_code == 401
    assert (
        contract.call(client, "get", "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert (
        contract.call(client, "get", "/metrics", headers={"Authorization": f"Bearer {token}"}).status_code
        == 200
    )
    guarded = make_app(metrics_allow_cidrs="192.0.2.0/24").test_client()
    assert contract.call(guarded, "get", "/metrics").status_code == 403
    assert not contract.problems, "\n".join(contract.problems)


def test_a_body_over_the_limit_is_told_the_limit(make_app: Any) -> None:
    """A 413 said only "request body is too large": a client splitting a batch (or trimming a body)
    could learn the limit neither from the answer nor from the spec. The message names the limit of
    the endpoint it was sent to, and the spec's 413 says where the limits come from."""
    client = make_app(max_body_bytes=32 * 1024).test_client()
    contract = _contract(client)
    user, admin = login(client), login(client, ADMIN_PASSWORD)
    posts = sorted(path for method, path in _every_operation(contract) if method == "post")
    too_large = b'{"x": "' + b"x" * 3 * 1024 * 1024 + b'"}'
    for path in posts:
        headers = {**(admin if path.startswith("/api/admin/") else user), **JSON_TYPE}
        answer = contract.call(client, "post", path, data=too_large, headers=headers)
        assert answer.status_code == 413, path
        limit = 2 * 1024 * 1024 if path.endswith("/batch") else 32 * 1024
        assert f"at most {limit} bytes" in answer.get_json()["error"]["message"], path
        description = contract.paths[path]["post"]["responses"]["413"]["description"]
        assert "MOVIEREC_MAX_BODY_BYTES" in description and "2 MiB" in description, path
    assert not contract.problems, "\n".join(contract.problems)


def test_every_schema_of_the_spec_is_valid_json_schema_and_every_reference_resolves(client: Any) -> None:
    """The answers above are validated with these schemas: each must itself be valid 2020-12."""
    contract = _contract(client)
    schemas = contract.document["components"]["schemas"]
    assert [name for name, schema in schemas.items() if not jsonschema_rs.meta.is_valid(schema)] == []
    referenced = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(contract.document)))
    assert referenced and referenced <= set(schemas), sorted(referenced - set(schemas))
