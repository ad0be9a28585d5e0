"""Flask's JSON through orjson: request bodies parsed and responses written at C speed.

Every API call parses a JSON body and writes one; for the bulk endpoints (1,000–10,000
records) the standard library's ``json`` was a large share of the time (docs/performance.md).
Behaviour kept from Flask's default provider: key order as built, compact output (indented
under ``--debug``), dates as HTTP dates, ``Decimal``/``UUID`` as strings, dataclasses as
objects. Stricter than ``json``: ``NaN``/``Infinity`` literals are not JSON and are refused as a
bad body (400); an integer beyond 64 bits is read as a float (no integer field takes it, see
``integral`` in app/recommender/features.py). NumPy arrays and scalars serialise directly.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import JSONProvider, _default

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class OrjsonProvider(JSONProvider):
    mimetype = "application/json"

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        self._flask = app

    def _bytes(self, obj: Any, *, indent: bool = False, sort_keys: bool = False) -> bytes:
        option = _OPTIONS | (orjson.OPT_INDENT_2 if indent else 0)
        option |= orjson.OPT_SORT_KEYS if sort_keys else 0
        return orjson.dumps(obj, default=_default, option=option)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        indent, sort_keys = bool(kwargs.get("indent")), bool(kwargs.get("sort_keys"))
        return self._bytes(obj, indent=indent, sort_keys=sort_keys).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        body = self._bytes(obj, indent=self._flask.debug) + b"\n"
        return self._flask.response_class(body, mimetype=self.mimetype)
