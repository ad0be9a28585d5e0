"""Two instances, one state — and no secret in any process argument or log line.

Two uwsgi instances on different ports share one PostgreSQL database and one (private) Redis,
as replicas behind a load balancer would: a token revoked on one is refused by the other at
once, the login rate limit is counted across both, feedback posted to either lands once, and
the circuit breaker is one state: opened by one instance's monitor, the other's lists come from
the fallback, and an admin reset on one closes it for both.
The same servers are then searched for the session password, the admin password and the JWT
secret: in every process's /proc/<pid>/cmdline and in everything they wrote to stdout/stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, PROFILE, SESSION_PASSWORD
from tests.integration.reliability import (
    Server,
    login,
    private_redis,
    server_environment,
    shipped_feedback,
    start_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cmdlines(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether ``check`` came true within ``timeout`` (a bound for a failure, not a measure)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _strategies(server: Server, headers: dict[str, str], n: int = 6) -> list[str]:
    """The strategies of ``n`` lists the server answers in a row (its two workers share them)."""
    answers = [
        requests.post(f"{server.url}/api/recommend", json=PROFILE, headers=headers, timeout=10)
        for _ in range(n)
    ]
    assert [r.status_code for r in answers] == [200] * n, [r.text[:200] for r in answers]
    return [r.json()["strategy"] for r in answers]


def _breaker(server: Server, headers: dict[str, str]) -> dict[str, Any]:
    response = requests.get(f"{server.url}/api/model", headers=headers, timeout=10)
    assert response.status_code == 200, response.text[:300]
    breaker: dict[str, Any] = response.json()["breaker"]
    return breaker


def _breaker_until(server: Server, headers: dict[str, str], state: str) -> dict[str, Any]:
    """The breaker block of the server's GET /api/model once it says ``state`` (30 s at most)."""
    seen: list[dict[str, Any]] = []

    def says() -> bool:
        seen.append(_breaker(server, headers))
        return seen[-1]["state"] == state

    assert _eventually(says), f"{server.url} never said {state}: {seen[-1]}"
    return seen[-1]


def test_two_instances_share_revocations_limits_feedback_and_the_breaker_and_leak_no_secret(
    tmp_path: Path, postgres_url: str, model_store: Path, synthetic_data_dir: Path
) -> None:
    with private_redis(tmp_path) as (redis_url, _redis):
        env = server_environment(
            tmp_path,
            model_store,
            synthetic_data_dir,
            postgres_url,
            redis_url,
            MOVIEREC_LOGIN_RATE_LIMIT="6 per minute",
            # the breaker opens on 8 feedback rows over 2 lists or more (never on latency here: a
            # loaded 2-core machine is not a failing model); a worker re-reads the shared record
            # every 0.2 s
            MOVIEREC_BREAKER_MIN_EVENTS="8",
            MOVIEREC_BREAKER_MIN_LISTS="2",
            MOVIEREC_BREAKER_MIN_REQUESTS="10000",
            MOVIEREC_MONITOR_SYNC_SECONDS="0.2",
        )
        # only A's monitor evaluates (every 0.5 s): B can only learn of an open breaker from the
        # shared record, never open it from the shared feedback itself
        a = start_server(tmp_path / "a", {**env, "MOVIEREC_MONITOR_INTERVAL_SECONDS": "0.5"})
        b = start_server(tmp_path / "b", {**env, "MOVIEREC_MONITOR_INTERVAL_SECONDS": "0"})
        try:
            figures = {}
            # 1. a token revoked on A is refused by B at once (shared Redis blocklist)
            token = login(a.url)
            assert requests.get(f"{b.url}/protected", headers=token, timeout=10).status_code == 200
            assert requests.post(f"{a.url}/api/logout", headers=token, timeout=10).status_code == 200
            refused = requests.get(f"{b.url}/protected", headers=token, timeout=10)
            assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
            figures["revoked_on_a_refused_on_b"] = refused.status_code

            # 2. feedback: recommend on A, score on B, retry on A and B: one row
            rec = requests.post(
                f"{a.url}/api/recommend", json=PROFILE, headers=login(b.url), timeout=10
            ).json()
            title = rec["recommendations"][0]
            statuses = [
                requests.post(
                    f"{server.url}/api/recommend/score",
                    json={"id": rec["id"], "movie": title, "score": score},
                    headers=login(server.url),
                    timeout=20,
                ).status_code
                for server, score in ((b, 4.0), (a, 4.5), (b, 5.0))
            ]
            assert statuses == [200, 200, 200]
            # the last acknowledged score wins, whichever instance ships its journal first
            rows, stored = shipped_feedback(postgres_url, {(rec["id"], title): 5.0})
            assert rows == 1 and stored == {(rec["id"], title): 5.0}
            figures["score_posts"], figures["rows"] = len(statuses), rows

            # 3. the breaker is one record in Redis: opened by A's monitor on eight lists scored
            # 0.5 through A, B's workers route their lists to the fallback; an admin reset on A
            # closes it for both instances' workers
            user, admin = login(a.url), login(a.url, password=ADMIN_PASSWORD)
            assert _strategies(b, user) == ["segment"] * 6
            for _ in range(8):
                body = requests.post(f"{a.url}/api/recommend", json=PROFILE, headers=user, timeout=10).json()
                score = {"id": body["id"], "movie": body["recommendations"][0], "score": 0.5}
                posted = requests.post(f"{a.url}/api/recommend/score", json=score, headers=user, timeout=20)
                assert posted.status_code == 200, posted.text[:300]
            # each worker re-reads the record every 0.2 s: the state of the one answering is waited for
            opened = _breaker_until(a, admin, "open")
            assert _eventually(lambda: _strategies(b, user) == ["fallback"] * 6), "B still serves the model"
            followed = _breaker_until(b, admin, "open")  # the record A wrote, not one of B's own
            assert (followed["reason"], followed["since"]) == (opened["reason"], opened["since"]), followed
            reset = requests.post(f"{a.url}/api/admin/breaker/reset", json={}, headers=admin, timeout=10)
            assert reset.status_code == 200 and reset.json()["state"] == "closed", reset.text[:300]
            for server in (b, a):
                assert _eventually(lambda s=server: _strategies(s, user) == ["segment"] * 6), server.url
            assert _breaker_until(b, admin, "closed")["reason"] == "reset by admin"
            figures["breaker_opened_on_a_b_serves"] = "fallback"
            figures["breaker_reset_on_a_b_serves"] = "segment"

            # 4. the login limit is one budget across both instances: 6 wrong passwords, alternating
            # A and B, spend it (the successful logins above do not count), then both answer 429
            attempts = []
            for i in range(8):
                server = (a, b)[i % 2]
                attempts.append(
                    requests.post(
                        f"{server.url}/api/login", json={"session_password": "wrong"}, timeout=10
                    ).status_code
                )
            assert 429 in attempts, attempts
            first_limited = attempts.index(429)
            assert all(s == 429 for s in attempts[first_limited:]), attempts
            assert first_limited == 6, f"the budget was not shared: {attempts}"
            figures["login_statuses_alternating_a_b"] = attempts
        finally:
            a.stop()
            b.stop()

        # 5. secrets hygiene on the same two deployments
        secrets = {
            "session password": SESSION_PASSWORD,
            "admin password": ADMIN_PASSWORD,
            "JWT secret": JWT_SECRET,
        }
        logs = a.output() + b.output()
        # the requests that carried the secrets and the token were logged, or the search proves nothing
        # (a bare "401" matched any timestamp or latency with those digits)
        for line in ('"path":"/api/login"', '"path":"/api/logout"', '"status":401'):
            assert line in logs, f"the servers logged no {line}: the search would prove nothing"
        for name, value in secrets.items():
            assert value not in logs, f"the {name} appears in the service output"
        assert "Bearer " not in logs and token["Authorization"].split()[1] not in logs, "a token was logged"
    print(
        f"\ntwo instances: {figures}; searched {len(logs)} bytes of output "
        f"for {len(secrets)} secrets: none found"
    )


def test_no_secret_on_any_process_command_line(
    tmp_path: Path, postgres_url: str, model_store: Path, synthetic_data_dir: Path
) -> None:
    env = server_environment(tmp_path, model_store, synthetic_data_dir, postgres_url, None)
    server = start_server(tmp_path / "s", env)
    try:
        login(server.url)
        pids = [server.process.pid, *server.worker_pids()]
        lines = _cmdlines(pids)
        assert len(lines) >= 3, lines  # master and two workers
        everything = _cmdlines([int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()])
    finally:
        server.stop()
    for value in (SESSION_PASSWORD, ADMIN_PASSWORD, JWT_SECRET):
        assert not [pid for pid, line in everything.items() if value in line], "a secret is on a command line"
    print(f"\ncmdline: searched {len(everything)} processes (service: {sorted(lines)}): no secret found")
