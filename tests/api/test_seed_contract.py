"""Every row and status code of the seed's API table, through the Flask test client."""

from __future__ import annotations

import json
import re
import time

import pytest

from app.config import JWT_LEEWAY_SECONDS
from app.recommender.segments import OCCUPATIONS
from app.storage.db import REQUEST_INPUTS
from tests.helpers import PROFILE, SESSION_PASSWORD, journal_records, login, stored_feedback

pytestmark = pytest.mark.api


def _recommend(client, headers, **body):
    return client.post("/api/recommend", json={**PROFILE, **body}, headers=headers)


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# ------------------------------------------------------------------ / and /protected


def test_index_welcomes(client) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "movierec" in response.get_json()["message"]


def test_the_bearer_scheme_is_case_insensitive(client, auth_headers) -> None:
    token = auth_headers["Authorization"].split()[1]
    for scheme in ("bearer", "BEARER", "bEaReR"):
        response = client.get("/protected", headers={"Authorization": f"{scheme} {token}"})
        assert response.status_code == 200, scheme
    assert client.get("/protected", headers={"Authorization": f"Bearerx {token}"}).status_code == 401


def test_protected_with_and_without_token(client, auth_headers) -> None:
    assert client.get("/protected", headers=auth_headers).get_json() == {"message": "Protected"}
    assert_envelope(client.get("/protected"), 401, "unauthorized")


# ------------------------------------------------------------------ /api/login


def test_login_returns_exactly_an_access_token(client) -> None:
    response = client.post("/api/login", json={"session_password": SESSION_PASSWORD})
    assert response.status_code == 200
    assert list(response.get_json()) == ["access_token"]


@pytest.mark.parametrize(
    "body", [{}, {"session_password": ""}, {"session_password": None}, {"password": "x"}]
)
def test_login_missing_password_is_400(client, body) -> None:
    error = assert_envelope(client.post("/api/login", json=body), 400, "invalid_request")
    assert "session_password" in error["fields"] or "password" in error["fields"]


def test_login_wrong_password_is_401(client) -> None:
    assert_envelope(client.post("/api/login", json={"session_password": "wrong"}), 401, "unauthorized")


def test_admin_password_gives_an_admin_token(client) -> None:
    from flask_jwt_extended import decode_token

    from tests.helpers import ADMIN_PASSWORD

    token = client.post("/api/login", json={"session_password": ADMIN_PASSWORD}).get_json()["access_token"]
    with client.application.app_context():
        assert decode_token(token)["role"] == "admin"


# ------------------------------------------------------------------ /api/recommend


def test_recommend_answers_the_seed_contract_plus_additive_fields(client, auth_headers) -> None:
    response = _recommend(client, auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body["id"], str) and body["id"]
    assert len(body["recommendations"]) == 10  # default max_recs
    assert len(set(body["recommendations"])) == 10
    assert [item["title"] for item in body["items"]] == body["recommendations"]
    assert body["strategy"] == "segment" and body["model_version"]


@pytest.mark.parametrize("max_recs", [1, 7, 50])
def test_max_recs_limits_the_list(client, auth_headers, max_recs) -> None:
    body = _recommend(client, auth_headers, max_recs=max_recs).get_json()
    # the synthetic catalogue has 59 movies, so 50 fit
    assert len(body["recommendations"]) == max_recs


RECOMMEND_OPTIONAL = ("age", "gender", "occupation", "max_recs", "user_id")


@pytest.mark.parametrize("field", ["max_recs", "user_id"])
def test_an_optional_field_sent_as_null_is_absent(client, auth_headers, field) -> None:
    """API.md: the recommend body's optional fields may be left out; ``null`` is the same as
    leaving one out, for each of them alike. ``max_recs: null`` was a 400 while ``user_id: null``
    (and a demographic's ``null`` beside a ``user_id``) was taken for absent."""
    response = _recommend(client, auth_headers, **{field: None})
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["recommendations"]) == 10  # the default max_recs


def test_a_batch_item_takes_null_for_absent_too(client, auth_headers) -> None:
    item = {**PROFILE, "max_recs": None, "user_id": None}
    response = client.post("/api/recommend/batch", json={"requests": [item]}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["results"][0]["recommendations"]) == 10


def test_the_spec_says_each_optional_recommend_field_takes_null(client) -> None:
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["RecommendRequest"]
    assert not schema.get("required")
    for name in RECOMMEND_OPTIONAL:
        types = [alternative.get("type") for alternative in schema["properties"][name].get("anyOf", [])]
        assert "null" in types, (name, schema["properties"][name])
    assert schema["properties"]["max_recs"]["default"] == 10


def test_integral_float_age_is_an_integer(client, auth_headers) -> None:
    assert _recommend(client, auth_headers, age=30.0).status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age", True),
        ("age", "30"),
        ("age", 2.5),
        ("age", 0),
        ("age", 121),
        ("age", None),
        ("gender", "X"),
        ("gender", "m"),
        ("gender", 1),
        ("occupation", "pilot"),
        ("occupation", ""),
        ("max_recs", 0),
        ("max_recs", 101),
        ("max_recs", "10"),
        ("max_recs", False),
        ("max_recs", 1e20),  # integral, but beyond 64 bits as an int: was a 500
        ("age", -1e20),
    ],
)
def test_each_invalid_field_is_named(client, auth_headers, field, value) -> None:
    error = assert_envelope(_recommend(client, auth_headers, **{field: value}), 400, "invalid_request")
    assert set(error["fields"]) == {field}


@pytest.mark.parametrize("missing", ["age", "gender", "occupation"])
def test_each_missing_field_is_named(client, auth_headers, missing) -> None:
    body = {k: v for k, v in PROFILE.items() if k != missing}
    error = assert_envelope(
        client.post("/api/recommend", json=body, headers=auth_headers), 400, "invalid_request"
    )
    assert set(error["fields"]) == {missing}


def test_unknown_fields_are_rejected(client, auth_headers) -> None:
    error = assert_envelope(_recommend(client, auth_headers, zodiac="leo"), 400, "invalid_request")
    assert error["fields"] == {"zodiac": "unknown field"}


@pytest.mark.parametrize("occupation", OCCUPATIONS)
def test_every_occupation_and_gender_is_served(client, auth_headers, occupation) -> None:
    for gender in ("M", "F", "O"):
        assert _recommend(client, auth_headers, occupation=occupation, gender=gender).status_code == 200


def test_recommend_needs_a_token(client) -> None:
    assert_envelope(client.post("/api/recommend", json=PROFILE), 401, "unauthorized")


def test_missing_token_is_401_before_validation(client) -> None:
    assert_envelope(client.post("/api/recommend", json={"age": "bad"}), 401, "unauthorized")


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-jwt", "Bearer a.b.c", "Token abc", "Bearer", ""],
)
def test_invalid_tokens_are_401_never_422(client, header) -> None:
    response = client.post("/api/recommend", json=PROFILE, headers={"Authorization": header})
    assert_envelope(response, 401, "unauthorized")


def test_expired_token_is_401(make_app) -> None:
    app = make_app(token_ttl_seconds=1)
    client = app.test_client()
    headers = login(client)
    time.sleep(1 + JWT_LEEWAY_SECONDS + 0.6)  # its lifetime, plus the replicas' clock leeway
    error = assert_envelope(client.post("/api/recommend", json=PROFILE, headers=headers), 401, "unauthorized")
    assert "expired" in error["message"]


def test_token_signed_with_another_secret_is_rejected(client, make_app) -> None:
    other = make_app(jwt_secret="y" * 48).test_client()
    foreign = login(other)
    assert_envelope(client.post("/api/recommend", json=PROFILE, headers=foreign), 401, "unauthorized")


# ------------------------------------------------------------------ malformed requests


def test_malformed_json_is_400(client, auth_headers) -> None:
    response = client.post(
        "/api/recommend", data="{not json", headers={**auth_headers, "Content-Type": "application/json"}
    )
    assert_envelope(response, 400, "invalid_request")


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null"])
def test_non_object_json_is_400(client, auth_headers, payload) -> None:
    """Valid JSON that is not an object is told so; ``null`` was called "not valid JSON"."""
    response = client.post(
        "/api/recommend", data=payload, headers={**auth_headers, "Content-Type": "application/json"}
    )
    assert_envelope(response, 400, "invalid_request")
    assert response.get_json()["error"]["message"] == "request body must be a JSON object"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32-le"])
def test_a_body_with_a_byte_order_mark_or_in_utf_16_or_32_is_read(client, auth_headers, encoding) -> None:
    """What the seed's Flask read (the standard library's ``json`` detects the encoding of a body)
    is read: a UTF-8 body behind a byte-order mark, which RFC 8259 (8.1) lets a parser ignore and
    editors on Windows write (``curl -d @login.json``), and UTF-16 or UTF-32. Read through orjson,
    which takes UTF-8 alone, each was a 400 "not valid JSON"."""
    headers = {**auth_headers, "Content-Type": "application/json"}
    expected = _recommend(client, auth_headers).get_json()["recommendations"]
    body = json.dumps({**PROFILE, "max_recs": 10}).encode(encoding)
    response = client.post("/api/recommend", data=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["recommendations"] == expected
    password = json.dumps({"session_password": SESSION_PASSWORD}).encode(encoding)
    login = client.post("/api/login", data=password, headers={"Content-Type": "application/json"})
    assert login.status_code == 200, login.get_json()


@pytest.mark.parametrize("body", [b"\xff\xfe{\x00\x00\xd8", b"\xef\xbb\xbf\xff{}", b"\x00{\x00"])
def test_a_body_that_is_no_text_in_its_encoding_is_400(client, auth_headers, body) -> None:
    """A byte-order mark or NUL bytes say which encoding to read; bytes that are no text in it
    (a lone UTF-16 surrogate, an invalid UTF-8 byte, an odd length) are a bad body, not a 500."""
    headers = {**auth_headers, "Content-Type": "application/json"}
    response = client.post("/api/recommend", data=body, headers=headers)
    assert assert_envelope(response, 400, "invalid_request")["message"] == "request body is not valid JSON"


@pytest.mark.parametrize(
    ("number", "encoding"),
    [
        ("1e400", "utf-8"),
        ("-1E+309", "utf-8"),
        ("9" * 400, "utf-8"),
        ("-" + "9" * 400, "utf-8"),
        ("1e400", "utf-16"),
    ],
)
def test_a_number_beyond_a_double_is_a_400_saying_so(client, auth_headers, number, encoding) -> None:
    """``{"age": 1e400}`` is valid JSON (RFC 8259 sets numbers no range) that orjson cannot read
    as a double: it was a 400 "not valid JSON". An integer literal of hundreds of digits is read
    as a float (app/api/json_provider.py), so beyond a double's range it is the same 400."""
    body = f'{{"age": {number}, "gender": "M", "occupation": "other"}}'.encode(encoding)
    headers = {**auth_headers, "Content-Type": "application/json"}
    error = assert_envelope(client.post("/api/recommend", data=body, headers=headers), 400, "invalid_request")
    assert error["message"] == "request body has a number out of range"
    assert set(error["fields"]) == {"body"} and "1.8e308" in error["fields"]["body"]


@pytest.mark.parametrize("body", ['{"age": 1e400,', '{"age": 1e400, "gender": NaN}', "[1e400"])
def test_a_number_out_of_range_in_a_body_that_is_no_json_is_still_not_json(
    client, auth_headers, body
) -> None:
    headers = {**auth_headers, "Content-Type": "application/json"}
    response = client.post("/api/recommend", data=body, headers=headers)
    assert assert_envelope(response, 400, "invalid_request")["message"] == "request body is not valid JSON"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_wrong_content_type_is_415(client, auth_headers, content_type) -> None:
    response = client.post(
        "/api/recommend", data="age=30", headers={**auth_headers, "Content-Type": content_type}
    )
    assert_envelope(response, 415, "invalid_request")


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "x-custom"])
def test_a_compressed_body_is_415_not_parsed_as_it_came(client, auth_headers, encoding) -> None:
    """No content coding is decoded: a gzipped body was read as raw bytes ("not valid JSON", 400),
    and a plain one labelled gzip was accepted. Refused on the label (RFC 9110, 15.5.16), saying
    what is accepted."""
    import gzip

    for body in (gzip.compress(b'{"age": 30, "gender": "M", "occupation": "programmer"}'),
                 b'{"age": 30, "gender": "M", "occupation": "programmer"}'):  # fmt: skip
        response = client.post(
            "/api/recommend",
            data=body,
            headers={**auth_headers, "Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert_envelope(response, 415, "invalid_request")
        assert "Content-Encoding" in response.get_json()["error"]["message"]
        assert response.headers["Accept-Encoding"] == "identity"
    plain = client.post(
        "/api/recommend",
        json={"age": 30, "gender": "M", "occupation": "programmer"},
        headers={**auth_headers, "Content-Encoding": "identity"},
    )
    assert plain.status_code == 200


def test_wrong_method_is_405_with_allow(client, auth_headers) -> None:
    response = client.get("/api/recommend", headers=auth_headers)
    assert_envelope(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_unknown_path_is_404_in_the_envelope(client) -> None:
    assert_envelope(client.get("/api/nothing-here"), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api//model"),
        ("GET", "//api//model"),
        ("GET", "/api/users/1//features"),
        ("POST", "/api//recommend"),
        ("POST", "//api//recommend"),
        ("POST", "/api/recommend//score"),
        ("OPTIONS", "/api//recommend"),
    ],
)
def test_a_path_with_an_empty_segment_under_api_is_404_in_the_envelope(
    client, auth_headers, method, path
) -> None:
    """An API path is matched as spelled: ``//`` in it is an unknown path. Werkzeug's slash merging
    answered a 308 with an HTML body and an absolute ``Location`` built from the Host header and
    the scheme the server saw (``http://`` behind a TLS proxy), which a client would follow with
    its token and body. The test client reads ``//api/…`` as a host, so PATH_INFO is set as uwsgi
    sets it from the request line."""
    response = client.open(
        "/", method=method, json=PROFILE, headers=auth_headers, environ_overrides={"PATH_INFO": path}
    )
    assert_envelope(response, 404, "not_found")
    assert "Location" not in response.headers
    assert response.mimetype == "application/json"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_leading_slashes_are_still_dropped(client, auth_headers, method) -> None:
    """``//api/…`` (a base URL ending in ``/`` joined to a path) was never redirected: Werkzeug
    drops leading slashes before routing, and such clients have always been answered."""
    path, body = ("//api/model", None) if method == "GET" else ("//api/recommend", PROFILE)
    response = client.open(
        "/", method=method, json=body, headers=auth_headers, environ_overrides={"PATH_INFO": path}
    )
    assert response.status_code == 200, response.get_json()


def test_a_page_path_with_an_empty_segment_is_still_redirected(client) -> None:
    """Only API paths are matched as spelled: a browser follows the redirect of a page."""
    response = client.get("/", environ_overrides={"PATH_INFO": "/ui//dashboard"})
    assert response.status_code == 308
    assert response.headers["Location"].endswith("/ui/dashboard")


@pytest.mark.parametrize("body", [None, "[]", "not json"])
def test_routing_answers_before_the_body_is_judged(client, auth_headers, body) -> None:
    """A wrong method is a 405 and an unknown path a 404 whatever the body (the JSON check ran
    first: a PUT without a body was a 415)."""
    headers = {**auth_headers, "Content-Type": "application/json"} if body is not None else auth_headers
    for method, path in (
        ("PUT", "/api/recommend"),
        ("POST", "/api/model"),
        ("POST", "/api/users/1/features"),
    ):
        response = client.open(path, method=method, data=body, headers=headers)
        assert_envelope(response, 405, "method_not_allowed")
        assert response.headers["Allow"]
    assert_envelope(client.post("/api/nothing-here", data=body, headers=headers), 404, "not_found")


def test_an_endpoint_whose_body_is_all_optional_takes_none(make_app, model_store, tmp_path) -> None:
    from tests.helpers import ADMIN_PASSWORD
    from tests.serving_helpers import copy_store

    store = copy_store(model_store, tmp_path / "store")  # a reload marks the store it reloads from
    client = make_app(model_path=store, model_dir=store).test_client()
    admin = login(client, ADMIN_PASSWORD)
    assert client.post("/api/admin/reload", headers=admin).status_code in (200, 202)
    assert client.post("/api/logout", headers=admin).status_code == 200
    # …but a body that is there must still be a JSON object
    assert_envelope(
        client.post("/api/admin/reload", data="x", headers=login(client, ADMIN_PASSWORD)),
        415,
        "invalid_request",
    )


def test_oversized_body_is_413(client, auth_headers) -> None:
    body = '{"age": 30, "pad": "' + "x" * (70 * 1024) + '"}'
    response = client.post(
        "/api/recommend", data=body, headers={**auth_headers, "Content-Type": "application/json"}
    )
    assert_envelope(response, 413, "payload_too_large")


def test_headers_over_16_kib_are_431_and_up_to_it_are_served(client, auth_headers) -> None:
    """The limit is the path, the query and every header's name and value, 16,384 bytes: one
    byte over it is refused in the envelope, naming the size and the limit; at it, served."""
    from app.api.security import MAX_HEADER_BYTES

    def recommend(padding: int):
        return client.post(
            "/api/recommend", json=PROFILE, headers={**auth_headers, "X-Padding": "p" * padding}
        )

    refused = recommend(20 * 1024)
    error = assert_envelope(refused, 431, "invalid_request")
    size = int(re.search(r"(\d+) bytes, at most 16384", error["message"]).group(1))
    rest = size - 20 * 1024  # everything but the padding
    assert 0 < rest < 1024
    assert recommend(MAX_HEADER_BYTES - rest).status_code == 200
    assert_envelope(recommend(MAX_HEADER_BYTES - rest + 1), 431, "invalid_request")
    assert_envelope(
        client.get("/health/live", headers={"X-Padding": "p" * 20 * 1024}), 431, "invalid_request"
    )


# ------------------------------------------------------------------ /api/recommend/score


def _issue(client, headers):
    body = _recommend(client, headers, max_recs=3).get_json()
    return body["id"], body["recommendations"]


def test_score_is_stored_and_answers_ok(app, client, auth_headers) -> None:
    request_id, titles = _issue(client, auth_headers)
    response = client.post(
        "/api/recommend/score",
        json={"id": request_id, "movie": titles[1], "score": 4.5},
        headers=auth_headers,
    )
    assert response.status_code == 200 and response.get_json() == "Ok"
    # acknowledged = synced to the feedback journal; in the database once shipped
    assert [(r.request_id, r.title, r.score) for r in journal_records(app)] == [(request_id, titles[1], 4.5)]
    rows = stored_feedback(app)
    assert [(r.request_id, r.title, r.score) for r in rows] == [(request_id, titles[1], 4.5)]


def test_rescoring_the_same_movie_updates_instead_of_duplicating(app, client, auth_headers) -> None:
    request_id, titles = _issue(client, auth_headers)
    for score in (2, 5):
        body = {"id": request_id, "movie": titles[0], "score": score}
        assert client.post("/api/recommend/score", json=body, headers=auth_headers).status_code == 200
    rows = stored_feedback(app)
    assert [(r.title, r.score) for r in rows] == [(titles[0], 5.0)]


def _served_list(app, titles: list[str]) -> str:
    """The id of a list served with these titles (movie ids 1, 2, …), as the request log holds it."""
    service = app.extensions["movierec"].recommendations
    request_id = service.ids.issue()
    items = [{"movie_id": i, "title": title, "score": 1.0} for i, title in enumerate(titles, 1)]
    service.request_log.append([{**dict.fromkeys(REQUEST_INPUTS), "id": request_id, "max_recs": len(items),
                                 "model_version": "v1", "strategy": "segment", "items": items}])  # fmt: skip
    return request_id


def _score(client, headers, request_id: str, movie: str):
    return client.post(
        "/api/recommend/score", json={"id": request_id, "movie": movie, "score": 4}, headers=headers
    )


def test_a_title_in_another_case_is_the_title_it_matches_alone(app, client, auth_headers) -> None:
    """A client that sends "toy story (1995)" for "Toy Story (1995)" names that movie: matched
    without case (Unicode case folding, after NFC), it is stored under the title as served. It
    was a 400 "movie was not recommended under this id"."""
    import unicodedata

    served = ["Toy Story (1995)", "Mis\u00e9rables, Les (1995)", "Stra\u00dfe (1990)"]
    request_id = _served_list(app, served)
    shouted_decomposed = unicodedata.normalize("NFD", "MIS\u00c9RABLES, LES (1995)")
    for sent in ("toy story (1995)", "TOY STORY (1995)", shouted_decomposed, "STRASSE (1990)"):
        response = _score(client, auth_headers, request_id, sent)
        assert response.status_code == 200, (sent, response.get_json())
    assert sorted((r.movie_id, r.title) for r in stored_feedback(app)) == [
        (1, served[0]),
        (2, served[1]),
        (3, served[2]),
    ]
    # spacing still counts: another text, not another case of the same one
    assert_envelope(_score(client, auth_headers, request_id, "toy  story (1995)"), 400, "invalid_request")


def test_a_title_matching_several_without_case_is_refused_saying_so(app, client, auth_headers) -> None:
    """Two titles of one list that differ only in case: each exact title is its movie, and a third
    spelling that matches both without case names neither: 400, and the message says why."""
    request_id = _served_list(app, ["Heat (1995)", "HEAT (1995)"])
    error = assert_envelope(_score(client, auth_headers, request_id, "heat (1995)"), 400, "invalid_request")
    assert "case" in error["message"] and set(error["fields"]) == {"movie"}
    assert _score(client, auth_headers, request_id, "HEAT (1995)").status_code == 200
    assert [(r.movie_id, r.title) for r in stored_feedback(app)] == [(2, "HEAT (1995)")]


def test_an_exact_title_does_not_fold_the_list(app, client, auth_headers) -> None:
    """The exact match (the usual case, on a benchmarked path) costs what it did: the case-folded
    index of a list is built only when a title misses it."""
    request_id = _served_list(app, ["Toy Story (1995)", "Heat (1995)"])
    assert _score(client, auth_headers, request_id, "Heat (1995)").status_code == 200
    target = app.extensions["movierec"].recommendations.targets.resolve(request_id, lambda: None)
    assert target.movie("Toy Story (1995)") == (1, "Toy Story (1995)")
    assert "folded" not in vars(target)
    assert target.movie("toy story (1995)") == (1, "Toy Story (1995)")
    assert "folded" in vars(target)


def test_a_title_in_another_unicode_normalization_is_the_same_title(app, client, auth_headers) -> None:
    """ml-100k's titles hold accents ("Misérables, Les (1995)", served precomposed, NFC). The same
    text decomposed (NFD: "e" + U+0301, what macOS input and some clients send) is the title that
    was recommended, and is stored as served; it was a 400 "movie was not recommended under this id"."""
    import unicodedata

    title = "Mis\u00e9rables, Les (1995)"
    request_id = _served_list(app, [title])
    decomposed = unicodedata.normalize("NFD", title)
    assert decomposed != title
    response = client.post(
        "/api/recommend/score", json={"id": request_id, "movie": decomposed, "score": 4}, headers=auth_headers
    )
    assert response.status_code == 200, response.get_json()
    assert [(r.movie_id, r.title) for r in stored_feedback(app)] == [(1, title)]
    # a different title (not merely another spelling of the same text) is still refused
    other = client.post(
        "/api/recommend/score", json={"id": request_id, "movie": "Miserables, Les (1995)", "score": 4},
        headers=auth_headers,
    )  # fmt: skip
    assert_envelope(other, 400, "invalid_request")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("score", 0),
        ("score", 5.5),
        ("score", "4"),
        ("score", True),
        ("score", None),
        ("id", ""),
        ("id", 12),
        ("movie", ""),
        ("movie", 3),
    ],
)
def test_each_invalid_score_field_is_named(client, auth_headers, field, value) -> None:
    request_id, titles = _issue(client, auth_headers)
    body = {"id": request_id, "movie": titles[0], "score": 3, field: value}
    error = assert_envelope(
        client.post("/api/recommend/score", json=body, headers=auth_headers), 400, "invalid_request"
    )
    assert set(error["fields"]) == {field}


def test_non_finite_scores_are_rejected(client, auth_headers) -> None:
    request_id, titles = _issue(client, auth_headers)
    for literal in ("NaN", "Infinity"):
        payload = f'{{"id": "{request_id}", "movie": "{titles[0]}", "score": {literal}}}'
        response = client.post(
            "/api/recommend/score", data=payload, headers={**auth_headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400


def test_unissued_id_and_unrecommended_movie_are_400(app, client, auth_headers) -> None:
    request_id, titles = _issue(client, auth_headers)
    error = assert_envelope(
        client.post(
            "/api/recommend/score",
            json={"id": "0" * 36, "movie": titles[0], "score": 3},
            headers=auth_headers,
        ),
        400,
        "invalid_request",
    )
    assert set(error["fields"]) == {"id"}
    all_titles = app.extensions["movierec"].models.require().titles
    other = next(t for t in all_titles if t not in titles)
    error = assert_envelope(
        client.post(
            "/api/recommend/score", json={"id": request_id, "movie": other, "score": 3}, headers=auth_headers
        ),
        400,
        "invalid_request",
    )
    assert set(error["fields"]) == {"movie"}
    assert app.extensions["movierec"].db.feedback_rows() == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def test_an_id_of_any_other_shape_is_400_before_the_database(request, make_app, backend) -> None:
    """Ids are canonical UUID text; anything else (a NUL above all: PostgreSQL refuses it in text
    with a DataError, which was a 500) is refused as never issued, not looked up."""
    app = (
        make_app(database_url=request.getfixturevalue("postgres_url"))
        if backend == "postgresql"
        else make_app()
    )
    client = app.test_client()
    headers = login(client)
    request_id, titles = _issue(client, headers)
    for bad in (
        "\x00",
        request_id + "\x00",
        "{" + request_id + "}",
        "{" + request_id.upper() + "}",
        "urn:uuid:" + request_id,
        " " + request_id,
        request_id.upper() + " ",
        request_id.replace("-", ""),
        request_id[:-1] + "\x00",
    ):
        error = assert_envelope(
            client.post(
                "/api/recommend/score", json={"id": bad, "movie": titles[0], "score": 3}, headers=headers
            ),
            400,
            "invalid_request",
        )
        assert set(error["fields"]) == {"id"}, bad
    ok = client.post(
        "/api/recommend/score", json={"id": request_id, "movie": titles[0], "score": 3}, headers=headers
    )
    assert ok.status_code == 200


def test_an_id_in_upper_or_mixed_case_scores_its_list_under_the_issued_id(app, client, auth_headers) -> None:
    """UUIDs are case-insensitive on input (RFC 9562), and clients that keep the id in a UUID
    type send it back upper-case: that was a 400 and the score lost. The journal and the rows
    keep the id as issued, so a re-score in another case replaces the score."""
    request_id, titles = _issue(client, auth_headers)
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(request_id))
    for spelling, score in ((request_id.upper(), 2), (mixed, 4.5)):
        body = {"id": spelling, "movie": titles[0], "score": score}
        response = client.post("/api/recommend/score", json=body, headers=auth_headers)
        assert response.status_code == 200, response.get_json()
    assert [(r.request_id, r.score) for r in journal_records(app)] == [(request_id, 2), (request_id, 4.5)]
    assert [(r.request_id, r.title, r.score) for r in stored_feedback(app)] == [(request_id, titles[0], 4.5)]


def test_score_needs_a_token(client) -> None:
    assert_envelope(
        client.post("/api/recommend/score", json={"id": "x", "movie": "y", "score": 3}), 401, "unauthorized"
    )


# ------------------------------------------------------------------ spec and health


def test_openapi_is_generated_from_the_schemas(client) -> None:
    spec = client.get("/openapi.json").get_json()
    paths = spec["paths"]
    for path in ("/api/login", "/api/recommend", "/api/recommend/score", "/protected"):
        assert path in paths
    # the operational endpoints of API.md are documented too (probes, Prometheus scrape)
    assert set(paths["/health/ready"]["get"]["responses"]) >= {"200", "503"}
    assert "/health/live" in paths
    assert set(paths["/metrics"]["get"]["responses"]) >= {"200", "401", "403"}
    schema = spec["components"]["schemas"]["RecommendRequest"]
    assert schema["additionalProperties"] is False
    age = schema["properties"]["age"]
    bounds = age.get("anyOf", [age])[0]
    assert bounds["minimum"] == 1 and bounds["maximum"] == 120
    assert "bearer" in spec["components"]["securitySchemes"]
    page = client.get("/docs").get_data(as_text=True)
    assert "/api/recommend" in page and "http://" not in page.replace("http://www.w3.org", "")


def test_openapi_lists_the_documented_refusals_of_login_and_reload(client) -> None:
    """API.md: login is rate-limited (429 ``rate_limited``); serving.md: a reload of another bundle
    while one loads is 409 ``reload_in_progress``. A client generated from the spec must know both."""
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "429" in paths["/api/login"]["post"]["responses"]
    assert "409" in paths["/api/admin/reload"]["post"]["responses"]


def test_readiness_reports_model_and_database(client) -> None:
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"model": True, "database": True, "journal_disk": True}
    assert client.get("/health/live").status_code == 200


def test_no_model_means_not_ready_and_503(make_app, tmp_path) -> None:
    client = make_app(model_path=tmp_path / "empty").test_client()
    assert client.get("/health/ready").status_code == 503
    headers = login(client)
    response = client.post("/api/recommend", json=PROFILE, headers=headers)
    assert_envelope(response, 503, "unavailable")
