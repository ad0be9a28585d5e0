"""Recommendation ids that prove they were issued by this service.

Request rows are written behind the response (:mod:`app.services.request_log`), and under
uwsgi a score may reach a worker other than the one that issued the id, before that worker
has flushed the row. The score path must then tell "issued, row still on its way" (wait for
it) from "never issued" (400 at once, without tying a thread up for a forged id). So an id
carries its own proof: 80 random bits plus a 42-bit MAC of them under a key every worker
derives from the shared JWT secret, laid out as an RFC 9562 version-8 UUID (36 characters,
the width of ``recommendation_requests.id``). Ids issued before this scheme (plain UUID4)
remain valid: the database is always asked first.

The MAC is keyed BLAKE2s (RFC 7693's keyed mode, a PRF), not HMAC-SHA256: every
``/api/recommend`` issues an id, and through OpenSSL an HMAC cost ~2.5 µs a call against
~0.8 µs (docs/performance.md, "Tenth machine"). Ids are only verified when their row is not
stored yet, and a worker stops (and flushes its rows) before code that signs differently
starts, so ids issued under the earlier HMAC are all in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import uuid

_RANDOM_BITS = 80
_MAC_BITS = 42  # 80 + 42 = 122 payload bits: a UUID minus its version and variant bits
_CONTEXT = b"movierec recommendation ids v2"
# Every id this service ever issued, signed or a plain UUID4 before, is a UUID in this form.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The same form in any case (ASCII only: no re.IGNORECASE, whose Unicode folding is no concern here).
_ANY_CASE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class RequestIds:
    """Issue and verify self-authenticating recommendation ids."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("a non-empty secret is needed to sign recommendation ids")
        # A key of its own, so the JWT secret itself never signs anything but tokens.
        self._key = hmac.new(secret, _CONTEXT, hashlib.sha256).digest()

    def _mac(self, random_part: bytes) -> int:
        digest = hashlib.blake2s(random_part, key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "big") >> (64 - _MAC_BITS)

    def issue(self) -> str:
        random_part = os.urandom(_RANDOM_BITS // 8)
        payload = (int.from_bytes(random_part, "big") << _MAC_BITS) | self._mac(random_part)
        high48, mid12, low62 = payload >> 74, (payload >> 62) & 0xFFF, payload & ((1 << 62) - 1)
        value = (high48 << 80) | (0x8 << 76) | (mid12 << 64) | (0b10 << 62) | low62
        text = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, at a third of its cost
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"

    @staticmethod
    def canonical(text: str) -> str | None:
        """``text`` as the id it spells, in the canonical form every id was issued in; else None.

        RFC 9562 makes UUID text case-insensitive on input, and clients that keep an id in a
        UUID type (Swift's ``uuidString``, SQL Server's ``uniqueidentifier``) send it back in
        upper case: the 8-4-4-4-12 hex form in any case is that id. Braces, a ``urn:uuid:``
        prefix, padding and every other spelling are not. Ids are matched, signed and stored
        only in the canonical form, so every place that takes one from a client passes it here.
        """
        if _CANONICAL.fullmatch(text) is not None:
            return text  # what clients send back nearly always: no copy
        return text.lower() if _ANY_CASE.fullmatch(text) is not None else None

    @staticmethod
    def well_formed(request_id: str) -> bool:
        """True for text in the canonical UUID form every id was issued in; nothing else is looked up.

        Checked before an id reaches the database: PostgreSQL refuses a NUL in any text
        parameter (a ``DataError``, a 500 had it reached the response), and no lookup is needed
        to know that text of another shape was never issued.
        """
        return _CANONICAL.fullmatch(request_id) is not None

    def verify(self, request_id: str) -> bool:
        """True only for an id this key issued (constant-time MAC comparison)."""
        if not isinstance(request_id, str) or not self.well_formed(request_id):
            return False  # only the canonical form we issue
        value = uuid.UUID(request_id).int
        if (value >> 76) & 0xF != 0x8 or (value >> 62) & 0b11 != 0b10:
            return False
        payload = ((value >> 80) << 74) | (((value >> 64) & 0xFFF) << 62) | (value & ((1 << 62) - 1))
        random_part, mac = payload >> _MAC_BITS, payload & ((1 << _MAC_BITS) - 1)
        expected = self._mac(random_part.to_bytes(_RANDOM_BITS // 8, "big"))
        return hmac.compare_digest(mac.to_bytes(6, "big"), expected.to_bytes(6, "big"))
