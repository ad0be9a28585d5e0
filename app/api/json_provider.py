"""Flask's JSON through orjson: request bodies parsed and responses written at C speed.

Every API call parses a JSON body and writes one; for the bulk endpoints (1,000–10,000
records) the standard library's ``json`` was a large share of the time (docs/performance.md).
Behaviour kept from Flask's default provider: key order as built, compact output (indented
under ``--debug``), dates as HTTP dates, ``Decimal``/``UUID`` as strings, dataclasses as
objects. Stricter than ``json``: ``NaN``/``Infinity`` literals are not JSON and are refused as a
bad body (400); an integer beyond 64 bits is read as a float (no integer field takes it, see
``integral`` in app/recommender/features.py). A number beyond a double's range, about ±1.8e308
(``1e400``; an integer literal of 310 digits, or of 309 from 2e308 on), is valid JSON that orjson
refuses, as it does a bad body: the same 400 until 2026-12-06. :func:`number_out_of_range`
tells such a body from one that is not JSON, on the refusal's path only (app/api/__init__.py
answers it a 400 of its own). NumPy arrays and scalars serialise directly.

A body is read in the encoding the standard library's ``json`` (Flask's default, the seed's)
detects: UTF-8 behind a byte-order mark (RFC 8259, 8.1, lets a parser ignore it, and editors on
Windows write one), UTF-16 or UTF-32. orjson reads UTF-8 alone, and each of those was a 400
"not valid JSON"; such a body is decoded first, a UTF-8 one without a mark goes to orjson as is.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import JSONProvider, _default

_MARKED_OR_WIDE = frozenset(b"\x00\xef\xfe\xff")
"""First bytes of a body that is not plain UTF-8 (a byte-order mark, or UTF-16/32's NUL); JSON
text in UTF-8 starts with none of them."""
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def number_out_of_range(body: bytes) -> bool:
    """True for a body that is JSON, read as the standard library's ``json`` reads it (in the
    encoding it detects, without ``NaN``/``Infinity``), holding a number beyond a double's range.

    For the error path only: orjson refuses such a body as it refuses text that is no JSON, and
    parsing it again here (at most MOVIEREC_MAX_BODY_BYTES, in Python) tells the two apart.
    """
    beyond = False

    def number(text: str) -> float:
        nonlocal beyond
        value = float(text)  # an integer of any length too: float() has no digit limit, int() has
        beyond = beyond or math.isinf(value)
        return value

    def constant(text: str) -> Any:
        raise ValueError(f"{text} is not JSON")

    try:
        json.loads(body, parse_float=number, parse_int=number, parse_constant=constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return beyond


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
        if isinstance(s, bytes) and s and (s[0] in _MARKED_OR_WIDE or (len(s) > 1 and not s[1])):
            # a mark (EF, FE, FF) or a NUL in the first two bytes: not plain UTF-8. A byte that is
            # no text in the encoding found raises UnicodeDecodeError, a ValueError: a bad body, 400
            return orjson.loads(s.decode(json.detect_encoding(s)))
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        body = self._bytes(obj, indent=self._flask.debug) + b"\n"
        return self._flask.response_class(body, mimetype=self.mimetype)
