"""Authentication and abuse, through the Flask test client: who gets in, how often, and for how long.

Tokens are forged here with PyJWT directly (alg none, tampered claims, other secrets, expired),
the way an attacker would, not with the app's own helpers.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest

from app import create_app
from app.config import JWT_LEEWAY_SECONDS, ConfigurationError
from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, PROFILE, SESSION_PASSWORD, login, record_calls

pytestmark = pytest.mark.api


def assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PASSWORDS = {"client": SESSION_PASSWORD, "admin": ADMIN_PASSWORD}


def claims(fingerprint: Any = "", **overrides: Any) -> dict[str, Any]:
    """The claims /api/login writes, forged with the key: ``fingerprint`` the password fingerprint
    of the token's role (``""``), of another role (its name), none (None) or that raw value."""
    from app.api.auth import FINGERPRINT_CLAIM, password_fingerprint

    now = int(time.time())
    base = {"sub": "client", "role": "client", "type": "access", "fresh": False, "jti": f"forged-{now}"}
    base.update(iat=now, nbf=now, exp=now + 600)
    base.update(overrides)
    role = fingerprint or base["role"]
    if fingerprint is None:
        pass
    elif isinstance(role, str) and role in PASSWORDS:
        base[FINGERPRINT_CLAIM] = password_fingerprint(JWT_SECRET, role, PASSWORDS[role])
    else:
        base[FINGERPRINT_CLAIM] = fingerprint
    return base


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# ------------------------------------------------------------------ passwords


def _record_comparisons(monkeypatch: Any) -> list[tuple[Any, ...]]:
    """Every hmac.compare_digest call from now on, with its two arguments."""
    return record_calls(monkeypatch, hmac, "compare_digest")


def test_password_check_is_constant_time_and_checks_both_roles(client: Any, monkeypatch: Any) -> None:
    """Every login compares against both passwords, matched or not, and compares equal-length
    digests, never the raw bytes: compare_digest returns at once on a length mismatch, so a
    raw comparison told the password's length by its timing."""
    calls = _record_comparisons(monkeypatch)
    secrets: set[bytes] = set()
    attempts = ((SESSION_PASSWORD, 200, 0), (ADMIN_PASSWORD, 200, 1), ("wrong", 401, None), ("c", 401, None))
    for password, status, matching in attempts:
        calls.clear()
        assert client.post("/api/login", json={"session_password": password}).status_code == status
        assert len(calls) == 2, "both secrets are compared on every attempt (no early exit)"
        assert {len(side) for call in calls for side in call} == {32}, "fixed-length digests"
        for given, expected in calls:
            assert password.encode() not in (given, expected)
            assert SESSION_PASSWORD.encode() not in (given, expected)
            assert ADMIN_PASSWORD.encode() not in (given, expected)
        # the first comparison is the session password's, the second the admin password's
        assert [given == expected for given, expected in calls] == [i == matching for i in (0, 1)]
        secrets.add(b"".join(expected for _, expected in calls))
    assert len(secrets) == 1, "the same two secrets are compared on every attempt"


def test_passwords_match_whichever_unicode_normalization_they_were_typed_in(
    make_app: Any, monkeypatch: Any
) -> None:
    """ "é" is one code point as Windows and Linux keyboards type it (NFC) and two, "e" and a
    combining accent, as macOS may (NFD): the same password typed on another system, or set in a
    file written there, was "invalid session password", at the API and in the web UI. Both sides
    are compared as NFC, still as fixed-length digests, for both roles."""
    session, admin = "crème brûlée", "Ångström-façade-clé"
    assert unicodedata.normalize("NFC", session) != unicodedata.normalize("NFD", session)

    def role_of(client: Any, password: str) -> str:
        answer = client.post("/api/login", json={"session_password": password})
        assert answer.status_code == 200, answer.get_json()
        return str(pyjwt.decode(answer.get_json()["access_token"], JWT_SECRET, algorithms=["HS256"])["role"])

    for configured in ("NFC", "NFD"):
        app = make_app(
            session_password=unicodedata.normalize(configured, session),
            admin_password=unicodedata.normalize(configured, admin),
        )
        client = app.test_client()
        for typed in ("NFC", "NFD"):
            calls = _record_comparisons(monkeypatch)
            assert role_of(client, unicodedata.normalize(typed, session)) == "client", (configured, typed)
            assert {len(side) for call in calls for side in call} == {32}, "fixed-length digests"
            assert role_of(client, unicodedata.normalize(typed, admin)) == "admin", (configured, typed)
            web = app.test_client().post(
                "/ui/login", data={"session_password": unicodedata.normalize(typed, admin)}
            )
            assert web.status_code == 303, (configured, typed, web.text)
        # the same letters without the accent are another password
        assert client.post("/api/login", json={"session_password": "creme brulee"}).status_code == 401


def test_a_password_longer_than_a_login_takes_is_refused_at_start(make_app: Any, make_settings: Any) -> None:
    """A SESSION_PASSWORD or ADMIN_PASSWORD over MAX_PASSWORD_LENGTH characters started, and no
    login could ever send it: /api/login (and /ui/login) refuse a longer password with a 400."""
    from pydantic import ValidationError

    from app.config import MAX_PASSWORD_LENGTH

    for field, variable in (("session_password", "SESSION_PASSWORD"), ("admin_password", "ADMIN_PASSWORD")):
        with pytest.raises(ValidationError, match=f"{variable} .*longer than {MAX_PASSWORD_LENGTH}"):
            make_settings(**{field: "p" * (MAX_PASSWORD_LENGTH + 1)})
    longest = {"client": "s" * MAX_PASSWORD_LENGTH, "admin": "a" * MAX_PASSWORD_LENGTH}
    client = make_app(session_password=longest["client"], admin_password=longest["admin"]).test_client()
    for role, password in longest.items():
        response = client.post("/api/login", json={"session_password": password})
        assert response.status_code == 200, response.get_json()
        assert pyjwt.decode(response.get_json()["access_token"], JWT_SECRET, ["HS256"])["role"] == role


def test_the_metrics_token_is_compared_as_a_fixed_length_digest(make_app: Any, monkeypatch: Any) -> None:
    """A raw compare_digest of the bearer token returned at once on a length mismatch: the
    token's length was told by the time a scrape took to be refused."""
    token = "scrape-secret-123"
    client = make_app(metrics_token=token).test_client()
    calls = _record_comparisons(monkeypatch)
    for given, status in (("x", 401), ("", 401), (token + "-longer", 401), (token, 200)):
        calls.clear()
        assert client.get("/metrics", headers=bearer(given)).status_code == status
        assert len(calls) == 1 and {len(side) for side in calls[0]} == {32}, given
        assert token.encode() not in calls[0]


def test_weak_or_default_jwt_secrets_refuse_to_start(make_settings: Any) -> None:
    for weak in ("secret", "changeme", "x" * 31, ""):
        with pytest.raises(ConfigurationError, match="MOVIEREC_JWT_SECRET"):
            create_app(make_settings(testing=False, jwt_secret=weak or None))
    app = create_app(make_settings(testing=False, jwt_secret="k" * 16 + "0123456789abcdefghijkl"))
    app.extensions["movierec"].close()


def test_an_admin_password_equal_to_the_session_password_refuses_to_start(make_settings: Any) -> None:
    """Every login with the session password would get an admin token: every client an admin."""
    with pytest.raises(ConfigurationError, match="ADMIN_PASSWORD"):
        create_app(make_settings(testing=False, admin_password=SESSION_PASSWORD))
    app = create_app(make_settings(testing=False))  # distinct passwords start
    app.extensions["movierec"].close()


def test_secrets_that_differ_only_in_unicode_normalization_are_the_same_secret(make_settings: Any) -> None:
    """Passwords are compared as NFC: an admin password that is the session password in another
    normalization (NFD, as macOS may write it) gave every client an admin token, and a metrics
    token or JWT secret so equal to a password held that login. Each refuses to start."""
    word = "k7-walrus-tea-clé-" + "é" * 16
    nfc, nfd = unicodedata.normalize("NFC", word), unicodedata.normalize("NFD", word)
    assert nfc != nfd
    for shared, match in (
        ({"session_password": nfc, "admin_password": nfd}, "ADMIN_PASSWORD is the session password"),
        ({"admin_password": nfd, "metrics_token": nfc}, "MOVIEREC_METRICS_TOKEN is ADMIN_PASSWORD"),
        ({"session_password": nfd, "metrics_token": nfc}, "MOVIEREC_METRICS_TOKEN is SESSION_PASSWORD"),
        ({"session_password": nfd, "jwt_secret": nfc}, "MOVIEREC_JWT_SECRET is the session password"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            create_app(make_settings(testing=False, **shared))


def test_a_jwt_secret_that_clients_or_scrapers_know_refuses_to_start(make_settings: Any) -> None:
    """The JWT secret equal to the session password (which every client sends) or to the metrics
    token (which every scraper sends) started the service, and any of them could sign a token
    with ``"role": "admin"``: the admin endpoints for every client. Refused, naming both."""
    known = "k" * 16 + "0123456789abcdefghijkl"
    for shared in ({"session_password": known}, {"metrics_token": known}):
        with pytest.raises(ConfigurationError, match="MOVIEREC_JWT_SECRET"):
            create_app(make_settings(testing=False, jwt_secret=known, **shared))
    app = create_app(make_settings(testing=False, jwt_secret=known, metrics_token="scrape-" + known))
    app.extensions["movierec"].close()


# ------------------------------------------------------------------ rate limit


def test_login_is_rate_limited_per_client_address(make_app: Any) -> None:
    client = make_app(login_rate_limit="3 per minute").test_client()
    here = {"REMOTE_ADDR": "203.0.113.7"}
    for _ in range(3):
        assert (
            client.post("/api/login", json={"session_password": "guess"}, environ_base=here).status_code
            == 401
        )
    limited = client.post("/api/login", json={"session_password": SESSION_PASSWORD}, environ_base=here)
    assert_envelope(limited, 429, "rate_limited")
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    # another address has its own budget; other endpoints are not limited
    other = client.post(
        "/api/login", json={"session_password": SESSION_PASSWORD}, environ_base={"REMOTE_ADDR": "2001:db8::1"}
    )
    assert other.status_code == 200
    assert client.get("/", environ_base=here).status_code == 200
    print(
        "\nrate limit: 3 attempts allowed, 4th refused with 429, Retry-After", limited.headers["Retry-After"]
    )


def test_only_wrong_passwords_spend_the_login_budget(make_app: Any) -> None:
    """Every login counted against the per-address budget, right password or not: an office or a
    CI system behind one NAT address that logged in 11 times a minute got 429 although no
    password was wrong. Only a wrong password (401) counts now, at the API and the web form
    alike; once the budget is spent on wrong ones, the right password is refused as well until
    the window passes, so guessing is slowed as before."""
    client = make_app(login_rate_limit="10 per minute").test_client()
    here = {"REMOTE_ADDR": "203.0.113.11"}

    def attempt(password: str, path: str = "/api/login") -> str:
        """The API's status; the web page's redirect (the refused login's to its login page)."""
        if path == "/api/login":
            answer = client.post(path, json={"session_password": password}, environ_base=here)
            return str(answer.status_code)
        answer = client.post(path, data={"session_password": password}, environ_base=here)
        return f"{answer.status_code} {answer.headers['Location']}"

    assert [attempt(SESSION_PASSWORD) for _ in range(11)] == ["200"] * 11
    assert [attempt(ADMIN_PASSWORD, "/ui/login") for _ in range(11)] == ["303 /ui"] * 11
    wrong = [attempt("guess", path) for path in ["/api/login", "/ui/login"] * 5]
    assert wrong == ["401", "303 /ui/login?error=wrong"] * 5
    assert attempt(SESSION_PASSWORD) == "429"
    assert attempt(SESSION_PASSWORD, "/ui/login") == "303 /ui/login?error=limited"
    assert client.post("/api/login", json={"session_password": SESSION_PASSWORD}).status_code == 200


def test_the_login_limit_says_it_is_the_login_budget_in_the_envelope_with_retry_after(make_app: Any) -> None:
    """The limit is configured with the message "too many login attempts", and the 429 said the
    generic "too many requests; slow down": a client could not tell its login budget was spent."""
    client = make_app(login_rate_limit="1 per minute").test_client()
    here = {"REMOTE_ADDR": "203.0.113.8"}
    assert client.post("/api/login", json={"session_password": "guess"}, environ_base=here).status_code == 401
    limited = client.post("/api/login", json={"session_password": "guess"}, environ_base=here)
    error = assert_envelope(limited, 429, "rate_limited")
    assert error["message"] == "too many login attempts", error
    assert 0 < int(limited.headers["Retry-After"]) <= 60


def test_the_web_login_takes_passwords_only_by_post_and_every_post_counts(make_app: Any) -> None:
    """HEAD /ui/login ran the view's password branch (only GET rendered the form), and the limit
    counts POSTs: a HEAD with the password as a form body was answered 401 or 303 with the token's
    cookie, as often as one liked. A HEAD is the form page's GET; only a POST tries a password."""
    client = make_app(login_rate_limit="2 per minute").test_client()
    here = {"REMOTE_ADDR": "203.0.113.9"}
    for method in ("HEAD", "GET"):
        for password in ("guess", SESSION_PASSWORD):
            page = client.open(
                "/ui/login", method=method, data={"session_password": password}, environ_base=here
            )
            assert page.status_code == 200, (method, page.status_code)
            assert "Set-Cookie" not in page.headers and "X-RateLimit-Remaining" not in page.headers
    tries = [
        client.post("/ui/login", data={"session_password": "guess"}, environ_base=here).headers["Location"]
        for _ in range(3)
    ]
    assert tries == ["/ui/login?error=wrong"] * 2 + ["/ui/login?error=limited"]


def test_an_ipv6_client_has_one_budget_for_its_whole_64(make_app: Any) -> None:
    """A host or a home line is given an IPv6 /64, so 2^64 addresses: each with its own budget,
    the per-address limit never stopped anyone guessing over IPv6. Addresses count per /64
    (RFC 6177's end-site assignment is at least that); an IPv4 client of a dual-stack listener
    (``::ffff:a.b.c.d``) counts as its IPv4 address."""
    client = make_app(login_rate_limit="2 per minute").test_client()

    def attempt(address: str) -> int:
        guess = {"session_password": "guess"}
        return int(client.post("/api/login", json=guess, environ_base={"REMOTE_ADDR": address}).status_code)

    assert [attempt(f"2001:db8:0:7::{n:x}") for n in range(1, 4)] == [401, 401, 429]
    assert attempt("2001:db8:0:8::1") == 401  # the next /64 is another client
    mapped = [attempt("198.51.100.9"), attempt("::ffff:198.51.100.9"), attempt("198.51.100.9")]
    assert mapped == [401, 401, 429]


def test_behind_a_load_balancer_each_client_has_its_own_login_budget(make_app: Any) -> None:
    """Behind the load balancer of docs/scaling.md every request came from the balancer's
    address, so every client shared one budget: one guesser (or one client with a stale
    password) spent it, and every other client's right password was a 429 for the rest of the
    window. The docs said to put ProxyFix in front, which no setting did. With
    MOVIEREC_FORWARDED_FOR_HOPS set to the number of proxies that append to X-Forwarded-For,
    the key is the address the outermost of them saw; what a client wrote there itself is not
    trusted. Without the setting the header is ignored (a client could pick its own key)."""

    def attempt(client: Any, password: str, forwarded: str) -> int:
        answer = client.post(
            "/api/login",
            json={"session_password": password},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},  # the balancer
            headers={"X-Forwarded-For": forwarded},
        )
        return int(answer.status_code)

    client = make_app(login_rate_limit="2 per minute", forwarded_for_hops=1).test_client()
    guesser = ["203.0.113.5", "1.1.1.1, 203.0.113.5", "2.2.2.2, 203.0.113.5"]  # its own entries
    assert [attempt(client, "guess", forwarded) for forwarded in guesser] == [401, 401, 429]
    assert attempt(client, SESSION_PASSWORD, "203.0.113.6") == 200  # another client
    assert attempt(client, "guess", "203.0.113.6") == 401
    # a balancer that adds the client's port: each connection's port is not a budget of its own
    ported = ["203.0.113.9:4711", "203.0.113.9:4712", "[2001:db8::9]:4713", "[2001:db8::9]:4714"]
    assert [attempt(client, "guess", forwarded) for forwarded in ported] == [401, 401, 401, 401]
    assert attempt(client, "guess", "203.0.113.9:4715") == 429
    assert attempt(client, "guess", "[2001:db8::9]:4716") == 429
    two_hops = make_app(login_rate_limit="2 per minute", forwarded_for_hops=2).test_client()
    tries = [attempt(two_hops, "guess", f"198.51.100.7, 10.1.0.{n}") for n in range(3)]  # via two proxies
    assert tries == [401, 401, 429]
    assert attempt(two_hops, "guess", "198.51.100.8, 10.1.0.1") == 401
    ignored = make_app(login_rate_limit="2 per minute").test_client()
    assert [attempt(ignored, "guess", f"203.0.113.{n}") for n in range(3)] == [401, 401, 429]


def test_with_redis_down_each_worker_counts_its_share_of_the_login_budget(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Without Redis each uwsgi worker counts its share of the budget in memory; with Redis
    configured but not answering, the limiter's in-memory fallback gave each worker the whole
    budget, so an address had as many times the configured tries as there are workers for as
    long as Redis was down. The fallback counts the same share; back to the whole budget, shared
    through Redis, once it answers."""
    from app.api import security
    from tests.helpers import free_port

    monkeypatch.setattr(security, "worker_processes", lambda: 2)
    client = make_app(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", login_rate_limit="4 per minute"
    ).test_client()
    here = {"REMOTE_ADDR": "203.0.113.10"}
    tries = [
        client.post("/api/login", json={"session_password": "guess"}, environ_base=here).status_code
        for _ in range(4)
    ]
    assert tries == [401, 401, 429, 429]
    url = request.getfixturevalue("local_redis_url")  # the part above needs no Redis
    client = make_app(redis_url=url, login_rate_limit="4 per minute").test_client()
    here = {"REMOTE_ADDR": f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"}  # a fresh count
    tries = [
        client.post("/api/login", json={"session_password": "guess"}, environ_base=here).status_code
        for _ in range(5)
    ]
    assert tries == [401, 401, 401, 401, 429]  # counted in Redis: every worker's tries, the whole budget


def test_a_client_that_waits_the_retry_after_of_a_429_is_past_the_window(
    make_app: Any, local_redis_url: str
) -> None:
    """Flask-Limiter floors Retry-After from a reset time that is itself rounded (Redis's TTL is
    whole seconds, rounded to the nearest): with 0.4 s of the window left it said 0, with 1.4 s
    it said 1, with 30.4 s 30, so a client that waited as told was refused again (at once, for
    0). It is rounded up now: never less than what is left of the window."""
    import redis

    client = make_app(redis_url=local_redis_url, login_rate_limit="1 per minute").test_client()
    here = {"REMOTE_ADDR": f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"}  # a fresh count
    assert client.post("/api/login", json={"session_password": "guess"}, environ_base=here).status_code == 401
    store = redis.Redis.from_url(local_redis_url)
    (window,) = [key for key in store.keys("LIMITS:*") if here["REMOTE_ADDR"].encode() + b"/login" in key]
    for left_ms in (400, 1400, 30400):
        store.pexpire(window, left_ms)
        limited = client.post("/api/login", json={"session_password": "guess"}, environ_base=here)
        assert_envelope(limited, 429, "rate_limited")
        wait_ms = int(limited.headers["Retry-After"]) * 1000
        assert left_ms <= wait_ms <= left_ms + 2000, (left_ms, wait_ms)  # never short, at most 2 s more


def test_retry_after_only_on_refusals(make_app: Any) -> None:
    client = make_app(login_rate_limit="5 per minute").test_client()
    ok = client.post("/api/login", json={"session_password": SESSION_PASSWORD})
    assert ok.status_code == 200 and "Retry-After" not in ok.headers
    # a right password spends nothing of the budget, a wrong one spends one try
    assert ok.headers["X-RateLimit-Limit"] == "5" and ok.headers["X-RateLimit-Remaining"] == "5"
    wrong = client.post("/api/login", json={"session_password": "guess"})
    assert wrong.status_code == 401 and "Retry-After" not in wrong.headers
    assert wrong.headers["X-RateLimit-Remaining"] == "4"


# ------------------------------------------------------------------ tokens


def test_alg_none_token_is_rejected(client: Any) -> None:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims())}."
    assert_envelope(client.get("/protected", headers=bearer(unsigned)), 401, "unauthorized")
    for alg in ("None", "NONE"):
        token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(claims())}."
        assert_envelope(client.get("/protected", headers=bearer(token)), 401, "unauthorized")


def test_tampered_and_foreign_tokens_are_rejected(client: Any, auth_headers: dict[str, str]) -> None:
    token = auth_headers["Authorization"].split()[1]
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["role"] == "client"
    promoted = _b64({**decoded, "role": "admin", "sub": "admin"})
    assert_envelope(
        client.post("/api/admin/reload", json={}, headers=bearer(f"{header}.{promoted}.{signature}")),
        401,
        "unauthorized",
    )
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert_envelope(
        client.get("/protected", headers=bearer(f"{header}.{payload}.{flipped}")), 401, "unauthorized"
    )
    other_secret = pyjwt.encode(claims(role="admin", sub="admin"), "y" * 48, algorithm="HS256")
    assert_envelope(client.get("/protected", headers=bearer(other_secret)), 401, "unauthorized")
    other_alg = pyjwt.encode(claims(), JWT_SECRET, algorithm="HS512")  # right key, algorithm not allowed
    assert_envelope(client.get("/protected", headers=bearer(other_alg)), 401, "unauthorized")
    for garbage in ("", "abc", "a.b.c", token + "x", "Bearer"):
        assert client.get("/protected", headers=bearer(garbage)).status_code == 401
    # the genuine token still works: the refusals above were about the forgeries
    assert client.get("/protected", headers=auth_headers).status_code == 200


def test_expired_tokens_are_refused(client: Any) -> None:
    past = int(time.time()) - 3600
    expired = pyjwt.encode(claims(iat=past - 60, nbf=past - 60, exp=past), JWT_SECRET, algorithm="HS256")
    error = assert_envelope(client.get("/protected", headers=bearer(expired)), 401, "unauthorized")
    assert "expired" in error["message"]
    valid = pyjwt.encode(claims(), JWT_SECRET, algorithm="HS256")  # same forge path, in date: accepted
    assert client.get("/protected", headers=bearer(valid)).status_code == 200


def test_tokens_the_service_never_issues_are_refused_even_with_its_key(client: Any) -> None:
    """Every token /api/login signs is an access token whose ``exp`` is ``iat`` plus the configured
    lifetime. One signed with the key elsewhere (a secret shared with another system, a script)
    without ``exp`` was accepted for ever, one typed ``id`` or ``anything`` was an access token,
    and one expiring after the year 9999 was accepted and then crashed its logout (500)."""
    now = int(time.time())
    forged = {
        "no exp": claims(),
        "odd type": claims(type="id"),
        "lifetime beyond the setting": claims(exp=now + 3600 + 60),
        "exp after 9999": claims(exp=10**12),
        "float exp": claims(exp=now + 600.5),
        "no iat": claims(),
    }
    del forged["no exp"]["exp"]
    del forged["no iat"]["iat"]
    for name, payload in forged.items():
        token = pyjwt.encode(payload, JWT_SECRET, algorithm="HS256")
        error = assert_envelope(client.get("/protected", headers=bearer(token)), 401, "unauthorized")
        assert error["message"] == "access token was rejected", name
        assert_envelope(client.post("/api/logout", headers=bearer(token)), 401, "unauthorized")
    # without a jti no logout could ever revoke it: refused as revoked
    no_jti = claims(exp=now + 3600)
    del no_jti["jti"]
    token = pyjwt.encode(no_jti, JWT_SECRET, algorithm="HS256")
    error = assert_envelope(client.get("/protected", headers=bearer(token)), 401, "unauthorized")
    assert error["message"] == "access token has been revoked: log in again"
    # the shape the service issues, forged the same way, passes: the refusals were about the claims
    issued = pyjwt.encode(claims(exp=now + 3600), JWT_SECRET, algorithm="HS256")
    assert client.get("/protected", headers=bearer(issued)).status_code == 200
    assert client.post("/api/logout", headers=bearer(issued)).status_code == 200


def test_tokens_expire_after_the_configured_lifetime(make_app: Any) -> None:
    client = make_app(token_ttl_seconds=1).test_client()
    headers = login(client)
    assert client.get("/protected", headers=headers).status_code == 200
    time.sleep(1 + JWT_LEEWAY_SECONDS + 0.6)  # its lifetime, plus the replicas' clock leeway
    assert_envelope(client.get("/protected", headers=headers), 401, "unauthorized")


def test_a_token_lifetime_longer_than_a_token_can_carry_is_refused_at_start(
    make_app: Any, make_settings: Any
) -> None:
    """A lifetime whose expiry falls past the year 9999 (about 7,970 years) started, and every
    login was a 500 (the library's ``datetime`` overflowed); the longest lifetime taken works."""
    from pydantic import ValidationError

    from app.config import MAX_TOKEN_TTL_SECONDS

    for ttl in (MAX_TOKEN_TTL_SECONDS + 1, 10**12):
        with pytest.raises(ValidationError, match="token_ttl_seconds"):
            make_settings(token_ttl_seconds=ttl)
    client = make_app(token_ttl_seconds=MAX_TOKEN_TTL_SECONDS).test_client()
    headers = login(client)
    assert client.get("/protected", headers=headers).status_code == 200
    assert client.post("/api/logout", headers=headers).status_code == 200
    assert_envelope(client.get("/protected", headers=headers), 401, "unauthorized")


def test_admin_endpoints_refuse_client_tokens(client: Any, auth_headers: dict[str, str]) -> None:
    admin_rules = [r for r in client.application.url_map.iter_rules() if r.rule.startswith("/api/admin/")]
    assert admin_rules, "no admin endpoint registered"
    for rule in admin_rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            send = getattr(client, method.lower())
            body = {"json": {}} if method == "POST" else {}
            assert_envelope(send(rule.rule, headers=auth_headers, **body), 403, "forbidden")
            assert_envelope(send(rule.rule, **body), 401, "unauthorized")
    print(f"\nadmin endpoints refusing client tokens: {[r.rule for r in admin_rules]}")


# ------------------------------------------------------------------ logout


def test_logout_revokes_only_that_token(client: Any) -> None:
    first, second = login(client), login(client)
    assert client.post("/api/recommend", json=PROFILE, headers=first).status_code == 200
    response = client.post("/api/logout", headers=first)
    assert response.status_code == 200 and response.get_json() == {"message": "Logged out"}
    error = assert_envelope(client.post("/api/recommend", json=PROFILE, headers=first), 401, "unauthorized")
    assert "revoked" in error["message"]
    assert_envelope(client.post("/api/logout", headers=first), 401, "unauthorized")
    assert client.get("/protected", headers=second).status_code == 200
    assert_envelope(client.post("/api/logout"), 401, "unauthorized")


def test_logout_is_durable_in_the_database_blocklist(make_app: Any, make_settings: Any) -> None:
    """A second app on the same database (no shared memory, no Redis) refuses the revoked token."""
    first = make_app()
    client = first.test_client()
    headers = login(client)
    assert client.post("/api/logout", headers=headers).status_code == 200
    from sqlalchemy import select

    from app.storage.models import RevokedToken

    with first.extensions["movierec"].db.session() as session:
        rows = session.scalars(select(RevokedToken)).all()
    assert len(rows) == 1 and rows[0].expires_at.replace(tzinfo=UTC) > datetime.now(UTC)
    second = make_app()  # same SQLite file: make_settings is per test
    other = second.test_client()
    assert_envelope(other.get("/protected", headers=headers), 401, "unauthorized")
    assert other.get("/protected", headers=login(other)).status_code == 200


def test_a_logout_recorded_while_redis_was_down_is_honoured_when_it_answers(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, local_redis_url: str
) -> None:
    """The logout went to the database only; the other instance asked Redis, which answered
    "not revoked", and accepted the token again (as after any Redis restart without persistence)."""
    import redis

    url = local_redis_url
    first, second = make_app(redis_url=url), make_app(redis_url=url)  # two instances, one database
    headers = login(first.test_client())

    def down(*_args: Any, **_kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(first.extensions["movierec.security"]["revocations"].redis, "set", down)
    assert first.test_client().post("/api/logout", headers=headers).status_code == 200
    assert_envelope(second.test_client().get("/protected", headers=headers), 401, "unauthorized")


def test_a_logout_does_not_wait_for_a_redis_the_revocation_list_is_backing_off_from(
    make_app: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that stopped answering (its host gone, the process hung) is skipped by the checks
    for ``retry_seconds`` after one failed try, but every logout still waited its socket timeout
    (0.5 s) for it, though the database took the revocation. A logout during the back-off records
    it in the database alone; Redis is still tried when the database does not answer either."""
    import os
    import signal

    from tests.helpers import database_down
    from tests.integration.reliability import private_redis

    with private_redis(tmp_path) as (url, server):
        app = make_app(redis_url=url)
        client = app.test_client()
        tokens = [login(client) for _ in range(3)]
        # every command the revocation list sends Redis (its check of the token, its write)
        commands = record_calls(
            monkeypatch, app.extensions["movierec.security"]["revocations"].redis, "execute_command"
        )
        os.kill(server.pid, signal.SIGSTOP)  # connections accepted, nothing answered
        try:
            assert client.post("/api/logout", headers=tokens[0]).status_code == 200
            assert len(commands) == 1, commands  # the failed try: the back-off starts
            assert client.post("/api/logout", headers=tokens[1]).status_code == 200
            assert len(commands) == 1, f"waited for the Redis in its back-off: {commands}"
            assert_envelope(client.get("/protected", headers=tokens[1]), 401, "unauthorized")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # back-off still running, Redis answering again, the database not: Redis takes the logout
        with database_down(app):
            assert client.post("/api/logout", headers=tokens[2]).status_code == 200
        stored = app.extensions["movierec.security"]["revocations"].redis
        jti = pyjwt.decode(tokens[2]["Authorization"].split()[1], JWT_SECRET, ["HS256"])["jti"]
        assert stored.exists(f"movierec:revoked:{jti}")


def test_revocations_of_expired_tokens_are_purged(app: Any) -> None:
    from sqlalchemy import func, select

    from app.api.security import EXTENSION
    from app.storage.models import RevokedToken

    store = app.extensions[EXTENSION]["revocations"]
    store.revoke("old", datetime.now(UTC) - timedelta(seconds=JWT_LEEWAY_SECONDS + 1))  # refused anyway
    store.revoke("live", datetime.now(UTC) + timedelta(hours=1))
    with app.extensions["movierec"].db.session() as session:
        assert session.scalar(select(func.count()).select_from(RevokedToken)) == 1


def test_logout_refuses_unknown_body_fields_and_keeps_the_token(client: Any) -> None:
    """API.md: unknown fields are rejected. /api/logout took any JSON object and revoked the token
    anyway ({"all": true} or a typo logged out this token and said nothing of the field); the
    breaker reset, the other body-optional endpoint, refused them. No body, or {}, still logs out."""
    headers = login(client)
    refused = client.post("/api/logout", json={"all": True}, headers=headers)
    error = assert_envelope(refused, 400, "invalid_request")
    assert error["fields"] == {"all": "unknown field"}
    assert client.get("/protected", headers=headers).status_code == 200  # not revoked
    assert client.post("/api/logout", json={}, headers=headers).status_code == 200
    assert_envelope(client.get("/protected", headers=headers), 401, "unauthorized")
    assert client.post("/api/logout", headers=login(client)).status_code == 200


def test_a_token_from_a_replica_whose_clock_runs_ahead_is_accepted(client: Any) -> None:
    """A token issued by another instance whose clock is a little ahead carries an ``iat`` and
    ``nbf`` in this one's future; used at once, it was refused as not yet valid. A few seconds
    are tolerated; a token from well into the future is still refused."""
    now = int(time.time())
    ahead = now + JWT_LEEWAY_SECONDS - 1
    token = pyjwt.encode(claims(iat=ahead, nbf=ahead, exp=ahead + 600), JWT_SECRET, algorithm="HS256")
    assert client.get("/protected", headers=bearer(token)).status_code == 200
    far = now + JWT_LEEWAY_SECONDS + 60
    token = pyjwt.encode(claims(iat=far, nbf=far, exp=far + 600), JWT_SECRET, algorithm="HS256")
    assert_envelope(client.get("/protected", headers=bearer(token)), 401, "unauthorized")


def test_every_token_refusal_carries_a_bearer_challenge(client: Any, auth_headers: dict[str, str]) -> None:
    """RFC 9110, 15.5.2: a 401 carries WWW-Authenticate (``/metrics`` did, the token-checked
    endpoints did not); RFC 6750, 3: no error code when no token came, ``invalid_token`` when
    the token sent was refused (forged, expired, revoked, not issued here)."""
    assert client.get("/protected").headers.get("WWW-Authenticate") == "Bearer"
    assert client.post("/api/recommend", json=PROFILE).headers.get("WWW-Authenticate") == "Bearer"
    past = int(time.time()) - 3600
    refused = {
        "garbage": "a.b.c",
        "other secret": pyjwt.encode(claims(), "y" * 48, algorithm="HS256"),
        "expired": pyjwt.encode(claims(iat=past - 1, nbf=past - 1, exp=past), JWT_SECRET, algorithm="HS256"),
        "not issued here": pyjwt.encode(claims(type="id"), JWT_SECRET, algorithm="HS256"),
    }
    for name, token in refused.items():
        response = client.get("/api/model", headers=bearer(token))
        assert response.status_code == 401, name
        assert response.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"', name
    assert client.post("/api/logout", headers=auth_headers).status_code == 200
    revoked = client.get("/protected", headers=auth_headers)
    assert revoked.status_code == 401
    assert revoked.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"'


def test_a_refused_password_or_metrics_token_carries_a_bearer_challenge_too(make_app: Any) -> None:
    """The token refusals carried WWW-Authenticate; the other 401s of the API did not: a wrong
    password at /api/login (a client is told the service takes bearer tokens, got there; no token
    was refused, so no error code, and never Basic, which makes browsers prompt), and /metrics
    with a wrong scraper token (``invalid_token``: a token was sent and refused). The body is the
    one envelope, as before."""
    client = make_app(metrics_token="scrape-secret-123").test_client()
    for password in ("wrong", "c"):
        response = client.post("/api/login", json={"session_password": password})
        error = assert_envelope(response, 401, "unauthorized")
        assert error == {"code": "unauthorized", "message": "invalid session password"}
        assert response.headers.get("WWW-Authenticate") == "Bearer"
    missing = client.get("/metrics")
    assert_envelope(missing, 401, "unauthorized")
    assert missing.headers.get("WWW-Authenticate") == "Bearer"
    for header in ("Bearer wrong", "bearer wrong", "Basic c2NyYXBl"):
        refused = client.get("/metrics", headers={"Authorization": header})
        assert_envelope(refused, 401, "unauthorized")
        expected = "Bearer" if header.startswith("Basic") else 'Bearer error="invalid_token"'
        assert refused.headers.get("WWW-Authenticate") == expected, header
    # a page of the web UI is not an API answer: its wrong password is a page, no challenge
    page = client.post("/ui/login", data={"session_password": "wrong"})
    assert page.status_code == 303 and "WWW-Authenticate" not in page.headers


def test_two_bearer_tokens_in_one_header_are_an_invalid_token_not_a_missing_one(
    client: Any, auth_headers: dict[str, str]
) -> None:
    """``Authorization: Bearer a, Bearer b`` was answered "missing access token" with the plain
    ``Bearer`` challenge (flask-jwt-extended calls more than one Bearer credential "missing"):
    a token was sent, and refused. It is the invalid-token 401, as a malformed header is; a
    header with no Bearer credential at all is still "missing"."""
    valid = auth_headers["Authorization"].split(" ", 1)[1]
    for header in ("Bearer a, Bearer b", "Bearer a,Bearer b", "bearer a, bearer b",
                   f"Bearer {valid}, Bearer {valid}", f"Basic eA==, Bearer {valid}, Bearer x"):  # fmt: skip
        response = client.get("/protected", headers={"Authorization": header})
        error = assert_envelope(response, 401, "unauthorized")
        assert error["message"].startswith("invalid access token"), (header, error)
        assert response.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"', header
    for header in ("Basic eA==", "Token abc"):
        response = client.get("/protected", headers={"Authorization": header})
        assert_envelope(response, 401, "unauthorized")
        assert response.headers.get("WWW-Authenticate") == "Bearer", header
    one_bearer = {"Authorization": f"Basic eA==, Bearer {valid}"}
    assert client.get("/protected", headers=one_bearer).status_code == 200


# ------------------------------------------------------------------ password changes


def _payload(headers: dict[str, str]) -> dict[str, Any]:
    token = headers["Authorization"].split(" ", 1)[1]
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


def test_changing_a_password_ends_the_tokens_issued_under_it(make_app: Any) -> None:
    """An admin token outlived a change of ADMIN_PASSWORD by up to its lifetime (1 h), and a client
    token a change of SESSION_PASSWORD: both now carry a keyed fingerprint of the password they
    were issued under, and an instance whose password differs refuses them (401 invalid_token)."""
    before = make_app().test_client()
    admin, client = login(before, ADMIN_PASSWORD), login(before)
    replica = make_app().test_client()  # same passwords and key: the tokens are good there
    assert replica.post("/api/admin/breaker/reset", json={}, headers=admin).status_code == 200
    assert replica.get("/protected", headers=client).status_code == 200

    changed = {
        "admin password changed": make_app(admin_password="a-new-admin-password"),
        "session password changed": make_app(session_password="a new session password"),
        "admin password removed": make_app(admin_password=None),
    }
    for name, app in changed.items():
        after = app.test_client()
        refused = (admin,) if name.startswith("admin") else (client,)
        for headers in refused:
            for response in (
                after.get("/protected", headers=headers),
                after.post("/api/admin/breaker/reset", json={}, headers=headers),
                after.post("/api/logout", headers=headers),
            ):
                error = assert_envelope(response, 401, "unauthorized")
                assert "password" in error["message"] and "log in again" in error["message"], name
                assert response.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"'
        kept = client if name.startswith("admin") else admin  # the other password did not change
        assert after.get("/protected", headers=kept).status_code == 200, name
        if name != "admin password removed":
            fresh = (
                login(after, "a-new-admin-password")
                if name.startswith("admin")
                else login(after, "a new session password")
            )
            assert after.get("/protected", headers=fresh).status_code == 200, name


def test_replicas_whose_passwords_differ_only_in_normalization_take_each_others_tokens(
    make_app: Any,
) -> None:
    """A password set as NFC on one replica and as NFD on another (a secret file written on macOS)
    is the same password: either logs in with it typed either way. But the fingerprint was taken
    of the bytes as set, so a token issued by one was refused by the other (401 "issued under a
    password that is no longer set"), on every request the load balancer sent there."""
    session, admin = "crème brûlée", "Ångström-façade-clé"
    replicas = {
        form: make_app(
            session_password=unicodedata.normalize(form, session),
            admin_password=unicodedata.normalize(form, admin),
        ).test_client()
        for form in ("NFC", "NFD")
    }
    for issuer, other in (("NFC", "NFD"), ("NFD", "NFC")):
        client, admin_token = login(replicas[issuer], session), login(replicas[issuer], admin)
        assert replicas[other].get("/protected", headers=client).status_code == 200, issuer
        reset = replicas[other].post("/api/admin/breaker/reset", json={}, headers=admin_token)
        assert reset.status_code == 200, (issuer, reset.get_json())


def test_the_password_fingerprint_is_keyed_and_tells_nothing_of_the_password(make_app: Any) -> None:
    """The claim is an HMAC under a key derived from the JWT secret: neither password nor a plain
    hash of it is in the (readable) token, and another key gives another fingerprint."""
    import hashlib

    from app.api.auth import FINGERPRINT_CLAIM

    app = make_app()
    client = app.test_client()
    admin, session = _payload(login(client, ADMIN_PASSWORD)), _payload(login(client))
    assert admin[FINGERPRINT_CLAIM] != session[FINGERPRINT_CLAIM]
    assert _payload(login(client))[FINGERPRINT_CLAIM] == session[FINGERPRINT_CLAIM]  # per password
    for password in (ADMIN_PASSWORD, SESSION_PASSWORD):
        text = json.dumps([admin, session])
        assert password not in text
        for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5, hashlib.sha512):
            plain = digest(password.encode()).digest()
            assert plain.hex() not in text
            assert base64.urlsafe_b64encode(plain).rstrip(b"=").decode()[:16] not in text
            assert base64.b64encode(plain).decode()[:16] not in text
    other_key = make_app(jwt_secret="z" * 48).test_client()
    assert _payload(login(other_key, ADMIN_PASSWORD))[FINGERPRINT_CLAIM] != admin[FINGERPRINT_CLAIM]


def test_a_token_with_a_missing_or_odd_fingerprint_or_role_is_refused_not_a_500(client: Any) -> None:
    forged = {
        "no fingerprint": claims(fingerprint=None),
        "other role's fingerprint": claims(role="admin", sub="admin", fingerprint="client"),
        "fingerprint not text": claims(fingerprint=[1]),
        "role not text": claims(role=["admin"]),
        "unknown role": claims(role="root"),
    }
    for name, payload in forged.items():
        token = pyjwt.encode(payload, JWT_SECRET, algorithm="HS256")
        response = client.get("/protected", headers=bearer(token))
        assert_envelope(response, 401, "unauthorized")
        assert response.headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"', name
        assert_envelope(client.post("/api/logout", headers=bearer(token)), 401, "unauthorized")
    # the claims /api/login writes, forged the same way with the key: accepted
    assert (
        client.get(
            "/protected", headers=bearer(pyjwt.encode(claims(), JWT_SECRET, algorithm="HS256"))
        ).status_code
        == 200
    )
