"""Self-authenticating recommendation ids (app/services/request_ids.py)."""

from __future__ import annotations

import uuid

import pytest

from app.services.request_ids import RequestIds


@pytest.fixture
def ids() -> RequestIds:
    return RequestIds(b"a shared secret")


def test_issued_ids_are_canonical_version_8_uuids(ids: RequestIds) -> None:
    for _ in range(200):
        issued = ids.issue()
        parsed = uuid.UUID(issued)
        assert str(parsed) == issued  # canonical: lower-case hex, 8-4-4-4-12
        assert len(issued) == 36
        assert parsed.version == 8
        assert parsed.variant == uuid.RFC_4122


def test_issued_ids_are_unique_and_verify(ids: RequestIds) -> None:
    issued = [ids.issue() for _ in range(2000)]
    assert len(set(issued)) == len(issued)
    assert all(ids.verify(i) for i in issued)


def test_another_key_shares_the_check_but_not_the_ids() -> None:
    first, same, other = RequestIds(b"secret one"), RequestIds(b"secret one"), RequestIds(b"secret two")
    issued = first.issue()
    assert same.verify(issued)  # every worker derives the same key from the shared secret
    assert not other.verify(issued)
    assert not first.verify(other.issue())


def test_any_flipped_payload_bit_is_refused(ids: RequestIds) -> None:
    value = uuid.UUID(ids.issue()).int
    fixed = {76, 77, 78, 79, 62, 63}  # version and variant bits: refused by the layout check
    for bit in range(128):
        if bit in fixed:
            continue
        assert not ids.verify(str(uuid.UUID(int=value ^ (1 << bit)))), bit


@pytest.mark.parametrize(
    "candidate",
    ["", "not-a-uuid", None, 42, "00000000-0000-0000-0000-000000000000"],
)
def test_malformed_or_foreign_ids_are_refused(ids: RequestIds, candidate: object) -> None:
    assert not ids.verify(candidate)  # type: ignore[arg-type]


def test_non_canonical_spelling_of_an_issued_id_is_refused(ids: RequestIds) -> None:
    issued = ids.issue()
    assert not ids.verify(issued.upper())
    assert not ids.verify(issued.replace("-", ""))
    assert not ids.verify("{" + issued + "}")


def test_canonical_lowers_an_id_in_any_case_and_nothing_else(ids: RequestIds) -> None:
    """RFC 9562: UUID text is case-insensitive on input (Swift's uuidString and SQL Server's
    uniqueidentifier hand ids back in upper case); every other spelling is still no id."""
    issued = ids.issue()
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(issued))
    for spelling in (issued, issued.upper(), mixed):
        assert RequestIds.canonical(spelling) == issued, spelling
        assert ids.verify(RequestIds.canonical(spelling) or "")
    for other in (
        "{" + issued.upper() + "}",
        "urn:uuid:" + issued,
        " " + issued,
        issued.upper() + "\n",
        issued.replace("-", ""),
        issued.upper()[:-1],
        "",
    ):
        assert RequestIds.canonical(other) is None, repr(other)


def test_plain_uuid4_is_not_taken_for_an_issued_id(ids: RequestIds) -> None:
    assert not any(ids.verify(str(uuid.uuid4())) for _ in range(200))


def test_well_formed_takes_every_issued_and_legacy_id_and_nothing_else(ids: RequestIds) -> None:
    issued = ids.issue()
    assert all(
        RequestIds.well_formed(i)
        for i in (issued, str(uuid.uuid4()), "0" * 8 + "-0000-0000-0000-" + "0" * 12)
    )
    for other in (
        issued.upper(),
        issued + "\n",
        issued + "\x00",
        issued[:-1],
        issued.replace("-", ""),
        "",
        "\x00",
    ):
        assert not RequestIds.well_formed(other), repr(other)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty secret"):
        RequestIds(b"")
