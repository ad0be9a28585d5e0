"""/openapi.json documents the refusals every JSON endpoint really gives, and the user id's type.

Every POST under /api/ reads a JSON body: a body over the limit is 413 ``payload_too_large`` and
a non-JSON content type is 415, on every one of them (app/api/__init__.py), but the spec listed
413 only for the two bulk endpoints and 415 nowhere. ``/api/users/<user_id>/...`` accepts only a
positive integer id (anything else is 400 naming ``user_id``) yet documented it as any string.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.recommender.features import MAX_ID

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


def test_the_user_id_path_parameter_is_documented_as_the_positive_integer_it_must_be(client: Any) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    for path in ("/api/users/{user_id}/features", "/api/users/{user_id}/recommendations"):
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["in"] == "path"]
        assert param["name"] == "user_id"
        assert param["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_ID}
