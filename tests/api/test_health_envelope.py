"""A not-ready answer is a 503 in the one error envelope (API.md: every 4xx/5xx body has one shape).

/health/ready answered 503 with its 200 body ({"status": "unavailable", "checks": ...}), the only
error status outside the envelope; the failing checks are now named in the message.
"""

from __future__ import annotations

import logging
import os
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


def test_without_a_model_the_api_says_when_to_retry_as_readiness_does(make_app: Any, tmp_path: Any) -> None:
    """No model loaded (a start before the first bundle, one that failed to load): /health/ready
    answered 503 with Retry-After 5, but /api/recommend, its batch and /api/model answered the same
    503 without one, so a client had no hint of when to retry (every other transient 503 has it)."""
    from tests.helpers import PROFILE, login

    client = make_app(model_path=tmp_path / "empty").test_client()
    headers = login(client)
    answers = {
        "recommend": client.post("/api/recommend", json=PROFILE, headers=headers),
        "batch": client.post("/api/recommend/batch", json={"requests": [PROFILE]}, headers=headers),
        "model": client.get("/api/model", headers=headers),
        "ready": client.get("/health/ready"),
    }
    for name, response in answers.items():
        assert response.status_code == 503, name
        assert response.get_json()["error"]["code"] == "unavailable", name
        assert response.headers.get("Retry-After") == "5", name


def test_the_spec_documents_the_envelope_for_not_ready(client: Any) -> None:
    responses = client.get("/openapi.json").get_json()["paths"]["/health/ready"]["get"]["responses"]
    schema = responses["503"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_ready_keeps_its_body(client: Any) -> None:
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"model": True, "database": True, "journal_disk": True}


def _statvfs_reporting(free_bytes: int, free_inodes: int = 1000, read_only: bool = False) -> Any:
    """``os.statvfs`` as on a filesystem with ``free_bytes`` left for unprivileged users (mounted
    ``read_only``: its ``f_flag`` has ``ST_RDONLY``)."""
    real = os.statvfs

    def fake(path: Any) -> Any:
        stats = real(path)
        fields = list(
            stats
        )  # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, ...
        fields[1] = 4096
        fields[3] = fields[4] = free_bytes // 4096
        fields[5] = max(fields[5], 100_000)
        fields[6] = fields[7] = free_inodes
        fields[8] = fields[8] | os.ST_RDONLY if read_only else fields[8] & ~os.ST_RDONLY
        return os.statvfs_result(fields)

    return fake


def test_not_ready_while_the_feedback_journals_disk_is_full(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A score is acknowledged only once synced into the journal: with its disk full every score
    fails, yet readiness said 200 and the load balancer kept sending them."""
    monkeypatch.setattr(os, "statvfs", _statvfs_reporting(64 * 1024))
    with caplog.at_level(logging.INFO, logger="app.services.feedback_journal"):
        response = client.get("/health/ready")
        assert client.get("/health/ready").status_code == 503
    full = [r for r in caplog.records if "disk is full" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.ERROR  # once, not at every probe
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    error = response.get_json()["error"]
    assert error["code"] == "unavailable"
    assert "feedback journal's disk" in error["message"] and "0.1 MiB free" in error["message"]
    assert "no model" not in error["message"] and "database" not in error["message"]
    # liveness does not depend on the disk: restarting the process frees nothing
    assert client.get("/health/live").status_code == 200
    # room for a journal segment again: ready
    monkeypatch.setattr(os, "statvfs", _statvfs_reporting(64 * 1024 * 1024))
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ok" and body["checks"]["journal_disk"] is True


def test_not_ready_when_the_journals_disk_has_no_inode_left(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new journal segment is a new file: no free inode, no segment."""
    monkeypatch.setattr(os, "statvfs", _statvfs_reporting(1 << 30, free_inodes=0))
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert "feedback journal's disk has no free inode" in response.get_json()["error"]["message"]


def test_not_ready_while_the_journals_filesystem_is_read_only(
    client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A filesystem remounted read-only after an error (ext4 ``errors=remount-ro``) or a volume
    mounted ``:ro`` has room to spare, so readiness said 200 while every score failed (503)."""
    monkeypatch.setattr(os, "statvfs", _statvfs_reporting(1 << 30, read_only=True))
    with caplog.at_level(logging.INFO, logger="app.services.feedback_journal"):
        response = client.get("/health/ready")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json()["error"]["message"] == (
        "not ready: the feedback journal's filesystem is read-only: scores cannot be stored"
    )
    assert [r.levelno for r in caplog.records if "read-only" in r.getMessage()] == [logging.ERROR]
    monkeypatch.setattr(os, "statvfs", _statvfs_reporting(1 << 30))
    assert client.get("/health/ready").status_code == 200


def test_not_ready_while_the_journal_cannot_be_created_and_scores_say_the_same(
    make_app: Any, tmp_path: Any
) -> None:
    """A journal directory the service cannot create or write in (a volume owned by another user,
    or, as here, a path through a regular file) has the disk's room, so readiness said 200 while
    every score got 503: the probe now looks at what a score needs, and the two agree."""
    from tests.helpers import PROFILE, login

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the journal's parent directory should be")
    client = make_app(feedback_journal_dir=blocker / "journal").test_client()
    headers = login(client)
    served = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    score = {"id": served["id"], "movie": served["recommendations"][0], "score": 4}
    scored = client.post("/api/recommend/score", json=score, headers=headers)
    assert scored.status_code == 503 and scored.get_json()["error"]["code"] == "unavailable"
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.get_json()["error"]["message"] == (
        "not ready: the feedback journal's directory cannot be written by the service: "
        "scores cannot be stored"
    )


def test_the_spec_of_a_ready_answer_says_what_a_200_holds(client: Any) -> None:
    """Not ready is the 503 envelope, so a 200 always says ``"status": "ok"`` and names the model it
    serves; the spec still let a 200 say ``"unavailable"`` with no model (its body before the 503)."""
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["Ready"]
    status, version = schema["properties"]["status"], schema["properties"]["model_version"]
    assert status.get("enum", [status.get("const")]) == ["ok"], status
    assert version.get("type") == "string" and "anyOf" not in version, version
    assert set(schema["required"]) >= {"status", "checks", "model_version"}
    body = client.get("/health/ready").get_json()
    assert body["status"] == "ok" and isinstance(body["model_version"], str)
