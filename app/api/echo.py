"""``POST /api/echo``: the floor every authenticated call pays, and nothing else.

It checks the token, parses and validates the JSON body, and returns it. The benchmarks
(bench/serve_bench.py) measure it in the same run as the real endpoints, so "as fast as the
framework" is a ratio measured on the same machine, not a number from elsewhere.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse
from app.api.serving_schemas import Echo
from app.api.spec import BEARER, spec
from app.errors import InvalidRequest

bp = Blueprint("echo", __name__)


@bp.post("/api/echo")
@jwt_required()
@spec.validate(
    json=Echo, resp=Response(HTTP_200=Echo, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse), security=BEARER
)
def echo(json: Echo) -> Any:
    """Return the JSON object sent (authenticated no-op)."""
    try:
        return jsonify(json.model_dump())
    except TypeError as exc:
        # orjson reads 1,024 levels of nesting but writes at most 254: such a body was a 500
        if "Recursion limit" not in str(exc):
            raise
        raise InvalidRequest(
            "request body is nested too deeply to echo",
            fields={"body": "must be nested at most 254 levels deep"},
        ) from exc
