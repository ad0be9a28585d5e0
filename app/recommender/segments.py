"""Demographic vocabulary and cold-start segments.

A cold-start request carries (age, gender, occupation). Models rank movies per *segment*:
(gender, age bucket, occupation). There are 3 × 7 × 21 = 441 segments, so every possible
cold-start answer can be precomputed and serving becomes a lookup; evaluation ranks test
users through the very same segment key, so what is measured is what is served.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

GENDERS: Final[tuple[str, ...]] = ("M", "F", "O")

OCCUPATIONS: Final[tuple[str, ...]] = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment",
    "executive", "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none",
    "other", "programmer", "retired", "salesman", "scientist", "student", "technician",
    "writer",
)  # fmt: skip

MIN_AGE: Final = 1
MAX_AGE: Final = 120

# MovieLens-1M's age groups: lower bounds of each bucket; the last one is open-ended.
AGE_BUCKET_LOWER: Final[tuple[int, ...]] = (1, 18, 25, 35, 45, 50, 56)
AGE_BUCKET_LABELS: Final[tuple[str, ...]] = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
# A representative age per bucket, for models that use age as a number.
AGE_BUCKET_CENTRE: Final[tuple[float, ...]] = (15.0, 21.0, 29.5, 39.5, 47.0, 52.5, 62.0)


def age_bucket(age: int) -> int:
    """Index of the bucket an age falls in (0..6)."""
    if not MIN_AGE <= age <= MAX_AGE:
        raise ValueError(f"age must be between {MIN_AGE} and {MAX_AGE}")
    bucket = 0
    for index, lower in enumerate(AGE_BUCKET_LOWER):
        if age >= lower:
            bucket = index
    return bucket


@dataclass(frozen=True, slots=True)
class Segment:
    """One cold-start key: gender, age bucket index, occupation."""

    gender: str
    age_bucket: int
    occupation: str

    @classmethod
    def of(cls, age: int, gender: str, occupation: str) -> Segment:
        return cls(gender=gender, age_bucket=age_bucket(age), occupation=occupation)

    @property
    def key(self) -> str:
        return f"{self.gender}|{self.age_bucket}|{self.occupation}"

    @property
    def age(self) -> float:
        return AGE_BUCKET_CENTRE[self.age_bucket]


def all_segments() -> list[Segment]:
    """Every segment, in a fixed order (gender, age bucket, occupation)."""
    return list(_iter_segments())


def _iter_segments() -> Iterator[Segment]:
    for gender in GENDERS:
        for bucket in range(len(AGE_BUCKET_LOWER)):
            for occupation in OCCUPATIONS:
                yield Segment(gender, bucket, occupation)


def segment_index() -> dict[str, int]:
    """Segment key → row in the precomputed segment table."""
    return {segment.key: row for row, segment in enumerate(all_segments())}
