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
                        "secured": bool(operation.get("security")),
                        "request": _ref_name(body),
                        "responses": {
                            code: r.get("description", "")
                            for code, r in operation.get("responses", {}).items()
                        },
                    }
                )
    schemas = document.get("components", {}).get("schemas", {})
    return render_template("docs.html", info=document.get("info", {}), operations=operations, schemas=schemas)


def _ref_name(schema: dict[str, Any] | None) -> str | None:
    if not schema:
        return None
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else None
