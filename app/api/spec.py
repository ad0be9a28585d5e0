"""The OpenAPI generator (spectree) shared by the blueprints.

Created once at import like any Flask extension and bound in ``create_app``. Request
validation failures are raised as :class:`InvalidRequest` so they reach the one error
envelope with every invalid field named.
"""

from __future__ import annotations

from typing import Any

from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData

from app.api.schemas import ErrorResponse, field_errors
from app.errors import InvalidRequest


def _raise_validation_error(
    _req: Any, _resp: Any, error: Exception | None, _instance: Any, adapter: Any
) -> None:
    if error is not None:
        fields = field_errors(adapter.validation_errors(error))
        names = ", ".join(sorted(fields))
        raise InvalidRequest(f"invalid request: check {names}", fields=fields)


spec = SpecTree(
    "flask",
    title="movierec",
    version="1",
    description="Authenticated movie recommendations (seed-004 contract plus extensions).",
    path="apidoc",
    page_templates={},  # /docs is served locally by app.api.docs: no CDN assets
    mode="strict",
    validation_error_status=400,
    validation_error_model=ErrorResponse,
    before=_raise_validation_error,
    naming_strategy=lambda model: model.__name__,
    security_schemes=[
        SecurityScheme(
            name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", bearer_format="JWT")
        )
    ],
)

BEARER: dict[str, list[str]] = {"bearer": []}
