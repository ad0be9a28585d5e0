"""The generated OpenAPI document at /openapi.json and a self-contained /docs page.

The page is rendered on the server from the same spec, so it needs no JavaScript or CDN.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template

from app.api.spec import spec

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(spec.spec)


@bp.get("/docs")
def docs() -> Any:
    document = spec.spec
    operations = []
    for path, methods in sorted(document.get("paths", {}).items()):
        for method, operation in methods.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                body = (
                    operation.get("requestBody", {})
                    .get("content", {})
                    .get("application/json", {})
                    .get("schema")
                )
                operations.append(
                    {
                        "method": method.upper(),
                        "path": path,
                        "summary": operation.get("summary") or "",
                        "description": operation.get("description") or "",
                        # a requirement ``{}`` makes the credential optional (/metrics)
                        "secured": bool(operation.get("security")) and {} not in operation["security"],
                        "request": _ref_name(body),
                        # a body every field of which is optional may be left out (BODY_OPTIONAL)
                        "request_optional": not operation.get("requestBody", {}).get("required", False),
                        "parameters": [_parameter(p) for p in operation.get("parameters", [])],
                        "responses": {
                            code: (
                                r.get("description", ""),
                                _ref_name(r.get("content", {}).get("application/json", {}).get("schema")),
                                sorted(r.get("headers", {})),
                            )
                            for code, r in operation.get("responses", {}).items()
                        },
                    }
                )
    schemas = document.get("components", {}).get("schemas", {})
    return render_template("docs.html", info=document.get("info", {}), operations=operations, schemas=schemas)


def _parameter(parameter: dict[str, Any]) -> dict[str, Any]:
    """A path or query parameter as the page shows it: name, where, type, bounds and default."""
    schema = parameter.get("schema", {})
    rule = schema.get("type", "")
    if "minimum" in schema and "maximum" in schema:
        rule = f"{rule} {schema['minimum']}..{schema['maximum']}".strip()
    if "default" in schema:
        rule = f"{rule}, default {schema['default']}"
    return {"name": parameter.get("name", ""), "in": parameter.get("in", ""),
            "required": bool(parameter.get("required")), "rule": rule}  # fmt: skip


def _ref_name(schema: dict[str, Any] | None) -> str | None:
    if not schema:
        return None
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None
