"""A not-ready answer is a 503 in the one error envelope (API.md: every 4xx/5xx body has one shape).

/health/ready answered 503 with its 200 body ({"status": "unavailable", "checks": ...}), the only
error status outside the envelope; the failing checks are now named in the message.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.api


def test_not_ready_is_a_503_in_the_envelope_naming_the_failed_check(make_app: Any, tmp_path: Any) -> None:
    client = make_app(model_path=tmp_path / "empty").test_client()
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == "unavailable"
    assert "no model is loaded" in body["error"]["message"]
    assert "database" not in body["error"]["message"]  # it answers


def test_the_spec_documents_the_envelope_for_not_ready(client: Any) -> None:
    responses = client.get("/openapi.json").get_json()["paths"]["/health/ready"]["get"]["responses"]
    schema = responses["503"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_ready_keeps_its_body(client: Any) -> None:
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ok" and body["checks"] == {"model": True, "database": True}
