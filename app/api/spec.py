"""The OpenAPI generator (spectree) shared by the blueprints.

Created once at import like any Flask extension and bound in ``create_app``. Request
validation failures are raised as :class:`InvalidRequest` so they reach the one error
envelope with every invalid field named.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from flask import current_app
from pydantic import ValidationError
from spectree import SecurityScheme, SpecTree
from spectree.model_adapter.pydantic_adapter import PydanticModelAdapter
from spectree.models import SecureType, SecuritySchemeData
from spectree.plugins.flask_plugin import FlaskPlugin

from app.api.schemas import ErrorResponse, field_errors, invalid_request
from app.errors import CODES, ApiError
from app.recommender.features import MAX_ID
from app.services.reload import InvalidBundle, ReloadIncomplete, ReloadInProgress, ReloadSuperseded


def _raise_validation_error(
    _req: Any, _resp: Any, error: Exception | None, _instance: Any, adapter: Any
) -> None:
    if error is not None:
        raise invalid_request(field_errors(adapter.validation_errors(error)))


VALIDATE_RESPONSES = "MOVIEREC_VALIDATE_RESPONSES"
"""Flask config key: check every response body against its documented model (see below)."""


class _FlaskPlugin(FlaskPlugin):
    """spectree's Flask plugin: request errors raised as the envelope, responses checked where asked.

    A refused request body becomes :class:`InvalidRequest` here, as it is found. spectree itself
    first writes pydantic's errors, which carry the refused input, with ``jsonify`` and only then
    calls the ``before`` hook: an invalid field holding a value nested ~255 levels deep (orjson
    reads 1,024 levels but writes 254) was a 500 ("Recursion limit reached") on every endpoint
    with a body, and every 400 paid for writing a body nobody sent.

    Request bodies are always validated. Response validation re-parses and re-validates the
    body a handler just built from typed data: in the tests and under ``--debug`` it turns a
    contract drift into a failure, in production it would only add a JSON round trip to
    every answer (docs/performance.md). ``Settings.validate_responses`` chooses.
    """

    def request_validation(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().request_validation(*args, **kwargs)
        except self.model_adapter.validation_error as error:
            _raise_validation_error(None, None, error, None, self.model_adapter)
            raise  # pragma: no cover - the line above always raises for an error

    def validate_response(
        self, resp: Any, resp_model: Any, skip_validation: bool, force_resp_serialize: bool
    ) -> Any:
        skip = skip_validation or not current_app.config.get(VALIDATE_RESPONSES, True)
        return super().validate_response(resp, resp_model, skip, force_resp_serialize)


class _ModelAdapter(PydanticModelAdapter):
    """spectree's pydantic adapter, reading a response body nested deeper than pydantic can.

    Response validation re-reads the body a view wrote with pydantic's own JSON parser, which
    stops at 200 levels of nesting, where orjson (the app's parser and writer) reads 1,024 and
    writes 254: ``/api/echo`` answered a valid body nested 202 to 254 levels deep with a 500
    whenever responses were validated (the tests, ``--debug``). Such a body is read with orjson
    and validated as the Python object; every other body as before.
    """

    def validate_json(self, model: Any, value: bytes) -> Any:
        try:
            return super().validate_json(model, value)
        except ValidationError as error:
            too_deep = [
                item for item in error.errors(include_url=False)
                if item["type"] == "json_invalid" and "recursion limit" in item["msg"]
            ]  # fmt: skip
            if not too_deep:
                raise
            return self.validate_obj(model, orjson.loads(value))


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
# every POST under /api/ reads a JSON body (app/api/__init__.py): these refusals apply to all of them
_BODY_REFUSALS = {
    "411": "Length Required",  # a chunked body the server does not pass on (app/api/security.py)
    # the message names the limit of the endpoint; the bulk ones take max(2 MiB, the setting)
    "413": "Request Entity Too Large: the body is over the endpoint's limit, which the message names "
    "(MOVIEREC_MAX_BODY_BYTES, 64 KiB by default; 2 MiB for /api/predict/batch and /api/recommend/batch)",
    "415": "Unsupported Media Type",
}
# Endpoints whose body fields are all optional: a POST without a body is a valid request there
# (app/api/__init__.py), and the spec says so (``requestBody.required`` false).
BODY_OPTIONAL = frozenset({"/api/logout", "/api/admin/reload", "/api/admin/breaker/reset"})
# any request may carry headers over the limit (app/api/security.py, MAX_HEADER_BYTES)
_HEADER_REFUSAL = {"431": "Request Header Fields Too Large"}

# The headers a client acts on, documented on every error status that carries them.
_WWW_AUTHENTICATE = {
    "description": 'The Bearer challenge every 401 carries: `Bearer error="invalid_token"` when the token '
    "sent was refused, `Bearer` when none was sent (and on a wrong password at /api/login).",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying, when waiting helps (a rate limit, no model loaded yet, "
    "the database or a store unreachable, a full backlog).",
    "schema": {"type": "integer", "minimum": 0},
}
_ACCEPT_ENCODING = {
    "description": "`identity` when the body was refused for its Content-Encoding: send it uncompressed.",
    "schema": {"type": "string"},
}
_STATUS_HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": _WWW_AUTHENTICATE},
    "415": {"Accept-Encoding": _ACCEPT_ENCODING},
    "429": {"Retry-After": _RETRY_AFTER},
    "503": {"Retry-After": _RETRY_AFTER},
}

_RELOAD_ERRORS: tuple[type[ApiError], ...] = (
    InvalidBundle,
    ReloadInProgress,
    ReloadIncomplete,
    ReloadSuperseded,
)


def _codes_of(*errors: type[ApiError]) -> dict[str, list[str]]:
    """The envelope codes of ``errors`` (classes with a fixed ``status`` and ``CODE``), by status."""
    codes: dict[str, list[str]] = {}
    for error in errors:
        codes.setdefault(str(error.status), []).append(error.CODE)  # type: ignore[attr-defined]
    return codes


# Operations whose error statuses carry codes of their own instead of the status's usual one
# (``app.errors.CODES``), and headers they never send: a reload's 503 is ``reload_incomplete``
# without Retry-After (asking again retries the workers that did not take it).
_OPERATION_CODES: dict[tuple[str, str], dict[str, list[str]]] = {
    ("post", "/api/admin/reload"): _codes_of(*_RELOAD_ERRORS),
}
_OPERATION_WITHOUT_HEADERS: dict[tuple[str, str], dict[str, set[str]]] = {
    ("post", "/api/admin/reload"): {"503": {"Retry-After"}},
}
# Success bodies that are not JSON, which spectree documents as no content at all.
_TEXT_ANSWERS: dict[tuple[str, str], str] = {("get", "/metrics"): "200"}  # Prometheus exposition


def _document_errors(path: str, method: str, responses: dict[str, Any]) -> None:
    """Each error status's envelope codes (``x-error-codes``, and in its description) and headers."""
    own_codes = _OPERATION_CODES.get((method, path), {})
    unsent = _OPERATION_WITHOUT_HEADERS.get((method, path), {})
    for status, response in responses.items():
        if not status.isdigit() or int(status) < 400:
            continue
        codes = own_codes.get(status) or [CODES.get(int(status), "internal")]
        response["x-error-codes"] = codes
        listed = " or ".join(f"`{code}`" for code in codes)
        response["description"] = f"{response.get('description') or status} (error.code {listed})"
        headers = {
            name: header
            for name, header in _STATUS_HEADERS.get(status, {}).items()
            if name not in unsent.get(status, set())
        }
        if headers:
            response["headers"] = {**response.get("headers", {}), **headers}


class _SpecTree(SpecTree):
    """spectree's generator, plus what it cannot see in the decorators.

    * 411, 413 (``payload_too_large``) and 415 on every POST: a chunked body the server does not
      pass on, the body limit and the JSON content type are enforced for all of them before the
      view runs, so no route's decorator lists them; 431 on every operation likewise (headers
      over 16 KiB).
    * No body required (``requestBody.required`` false) where every body field is optional
      (:data:`BODY_OPTIONAL`): spectree marks every request body required, and a client built
      from the spec, or a gateway validating against it, insisted on one for ``/api/logout``.
    * ``user_id`` path parameters as the positive integers they must be: the routes take the
      segment as text so that anything else is a 400 naming ``user_id`` (``int:`` would make it
      a bare 404), and spectree documents such a segment as any string.
    * No 400 on a GET outside ``/api/`` that takes no parameters (``/``, ``/protected``, the
      health probes, ``/metrics``): spectree lists its validation status on every operation, but
      these read no body and ignore a query string (``NoQuery``), so they never answer 400.
    * On every error status, the envelope codes it carries (``x-error-codes``, also named in its
      description) and the headers a client acts on: ``WWW-Authenticate`` on 401,
      ``Accept-Encoding`` on 415, ``Retry-After`` on 429 and 503 (:func:`_document_errors`).
    """

    def _generate_spec(self) -> dict[str, Any]:
        document: dict[str, Any] = super()._generate_spec()
        for path, methods in document.get("paths", {}).items():
            for method, operation in methods.items():
                if not isinstance(operation, dict):
                    continue
                if (
                    method == "get"
                    and not path.startswith("/api/")
                    and not operation.get("parameters")
                    and "requestBody" not in operation
                ):
                    operation.get("responses", {}).pop("400", None)
                if path in BODY_OPTIONAL and "requestBody" in operation:
                    operation["requestBody"]["required"] = False
                responses = operation.setdefault("responses", {})
                refusals = {**_BODY_REFUSALS, **_HEADER_REFUSAL} if method == "post" else _HEADER_REFUSAL
                for status, description in refusals.items():
                    # the description too where a view lists the status (413 on the bulk endpoints)
                    responses.setdefault(status, {"content": _ERROR_CONTENT})["description"] = description
                _document_errors(path, method, responses)
                text = _TEXT_ANSWERS.get((method, path))
                if text is not None:
                    answer = responses.setdefault(text, {"description": "OK"})
                    answer["content"] = {"text/plain": {"schema": {"type": "string"}}}
                for parameter in operation.get("parameters", []):
                    if parameter.get("in") == "path" and parameter.get("name") == "user_id":
                        parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
        return document


spec = _SpecTree(
    "flask",
    backend=_FlaskPlugin,
    # spectree types the adapter with its generic protocol, which its own pydantic adapter
    # (``validation_error`` a pydantic ValidationError) does not match either
    model_adapter=cast(Any, _ModelAdapter()),
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
        ),
        # the scraper's token of /metrics (MOVIEREC_METRICS_TOKEN), not a token from /api/login
        SecurityScheme(name="metrics_token", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer")),
    ],
)

BEARER: dict[str, list[str]] = {"bearer": []}
METRICS_TOKEN: list[dict[str, list[str]]] = [{}, {"metrics_token": []}]
"""/metrics: no credential, or the scraper's bearer token when MOVIEREC_METRICS_TOKEN is set."""
