"""Fuzzing the contract: schemathesis drives every operation of the generated /openapi.json in process.

Two runs over all endpoints — with a valid client token, and with none — each bounded to a fixed
number of examples per operation (a few seconds in all). Every response must be documented
(status, content type, headers, body schema), nothing may answer 5xx, and every 4xx is the one
error envelope. A fresh token is minted for each case because ``POST /api/logout`` is fuzzed too
and would otherwise revoke the token under the remaining cases.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.api

MAX_EXAMPLES = 10  # per operation and generation mode


@pytest.fixture
def fuzz_app(make_app: Any) -> Any:
    # a generous login limit: the fuzzer logs in far more often than a person may
    return make_app(login_rate_limit="100000 per minute")


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is reproducible
    database=None,
    suppress_health_check=list(HealthCheck),
)


# 413 is a correct refusal of schema-violating data too (an over-long list is over-long in bytes)
CONFIG = SchemathesisConfig.from_str(
    "[checks.negative_data_rejection]\n"
    'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",'
    ' "429", "5xx"]\n'
)

# Operations whose 400s come from rules JSON Schema cannot state (state on the server): a
# schema-valid body may be refused, so schemathesis' "positive data accepted" check is off there.
SEMANTIC_RULES = {
    "POST /api/recommend/score": "id must be one this service issued; movie one recommended under it",
    "POST /api/predict/stream": "movie_id must be in the served model's catalogue",
    "POST /api/predict/batch": "every movie_id must be in the served model's catalogue",
    # the spec states user_id as a positive integer now; a user without features is still a 404
    "GET /api/users/{user_id}/features": "user_id must be a user with stored features",
    "GET /api/users/{user_id}/recommendations": "user_id must be a user with stored features",
}


def error_envelope(_ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx body is {"error": {"code": str, "message": str, "fields"?: {str: str}}}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"not the error envelope: {body!r}"
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], error
    assert isinstance(error.get("message"), str) and error["message"], error
    assert set(error) <= {"code", "message", "fields"}, error
    if "fields" in error:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in error["fields"].items()), error
    assert "Traceback" not in response.text
    return True


def _token(app: Any, role: str = "client") -> str:
    from flask_jwt_extended import create_access_token

    from app.api.auth import token_claims

    with app.app_context():
        return create_access_token(identity=role, additional_claims=token_claims(role))


def _checked_call(
    app: Any, case: Any, *, with_token: bool, statuses: Counter[str], role: str = "client"
) -> None:
    headers = {"Authorization": f"Bearer {_token(app, role)}"} if with_token else None
    if not with_token and case.headers:
        case.headers.pop("Authorization", None)
    excluded = [positive_data_acceptance] if case.operation.label in SEMANTIC_RULES else []
    response = case.call_and_validate(
        headers=headers, additional_checks=[error_envelope], excluded_checks=excluded
    )
    statuses[f"{case.method} {case.path} {response.status_code}"] += 1
    security = case.operation.definition.raw.get("security")
    if security and {} not in security and not with_token:  # ``{}``: no credential needed (/metrics)
        # no token: refused before anything else happens (or the request itself is malformed)
        assert response.status_code in (400, 401, 405, 413, 415), response.status_code


def fuzz(
    app: Any, *, with_token: bool, modes: tuple[GenerationMode, ...], role: str = "client", prefix: str = ""
) -> tuple[Counter[str], list[str]]:
    """Run every operation of the app's spec (those whose path starts with ``prefix``), positive and
    negative examples, with a ``role`` token or none; return statuses, failures."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    seconds: dict[str, float] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5, "the spec lost its operations"
    operations = [operation for operation in operations if operation.path.startswith(prefix)]
    for operation in operations:
        for mode in modes:
            run = FUZZ_SETTINGS(
                given(case=operation.as_strategy(generation_mode=mode))(
                    lambda case: _checked_call(app, case, with_token=with_token, statuses=statuses, role=role)
                )
            )
            started = time.perf_counter()
            try:
                run()
            except Unsatisfiable:
                continue  # nothing to make invalid (GET / has no inputs): there is no negative example
            except Exception as exc:  # collect every operation's failure, then fail once with all of them
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
            finally:
                seconds[f"{operation.label} [{mode.value}]"] = time.perf_counter() - started
    slowest = sorted(seconds.items(), key=lambda kv: -kv[1])[:5]
    print("\nslowest operations: " + ", ".join(f"{label} {secs:.1f}s" for label, secs in slowest))
    return statuses, failures


def _report(title: str, statuses: Counter[str], failures: list[str]) -> None:
    print(f"\n{title}: {sum(statuses.values())} responses checked, {len(failures)} failing operations")
    for key, count in sorted(statuses.items()):
        print(f"  {key}: {count}")
    server_errors = [key for key in statuses if key.rsplit(" ", 1)[1].startswith("5")]
    assert not server_errors, server_errors
    assert not failures, "\n\n".join(failures)


def test_fuzz_every_operation_with_a_valid_token(fuzz_app: Any) -> None:
    statuses, failures = fuzz(
        fuzz_app, with_token=True, modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    )
    _report("fuzz with token", statuses, failures)
    assert any(key.endswith(" 200") for key in statuses), "no example was accepted: the fuzzer tested nothing"


def test_fuzz_every_operation_without_a_token(fuzz_app: Any) -> None:
    # the token check comes before validation, so schema-valid bodies are enough to cover it
    statuses, failures = fuzz(fuzz_app, with_token=False, modes=(GenerationMode.POSITIVE,))
    _report("fuzz without token", statuses, failures)
    assert any(key.endswith(" 401") for key in statuses)


def test_fuzz_the_admin_operations_with_an_admin_token(
    make_app: Any, model_store: Any, tmp_path: Any
) -> None:
    """With a client token the admin operations only ever answer 403: their bodies are fuzzed here,
    with an admin token (a longer run of this found the reload ``version`` rule the spec did not
    state: tests/api/test_openapi_refusals.py pins that one)."""
    from tests.serving_helpers import copy_store

    store = copy_store(model_store, tmp_path / "store")  # a reload marks the store it reloads from
    app = make_app(login_rate_limit="100000 per minute", model_path=store, model_dir=store)
    statuses, failures = fuzz(
        app, with_token=True, modes=(GenerationMode.POSITIVE, GenerationMode.NEGATIVE), role="admin",
        prefix="/api/admin/",
    )  # fmt: skip
    _report("fuzz admin operations", statuses, failures)
    assert any(key.startswith("POST /api/admin/reload 20") for key in statuses), statuses
