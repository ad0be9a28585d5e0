"""The split seeds of EVALUATION.md, apart from evaluation.py so the CLI can name them as option
defaults without importing NumPy, pandas and every model (about a second per command)."""

from __future__ import annotations

from collections.abc import Sequence

STANDARD_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
REFERENCE_SEED = 42


def parse_seeds(value: str | Sequence[int]) -> list[int]:
    """Split seeds from ``"0,1,4"`` (or a sequence): each once, in the order given; ValueError for
    anything but non-negative integers, or none.

    numpy's ``default_rng`` takes no negative seed (the first split failed with a traceback, after
    the data was loaded), and a repeated seed was evaluated twice and weighted double in the mean
    every candidate is ranked by.
    """
    if isinstance(value, str):
        try:
            seeds = [int(part) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            raise ValueError(
                f"seeds must be comma-separated integers, e.g. 0,1,2,3,4, not {value!r}"
            ) from exc
    else:
        seeds = [int(s) for s in value]
    if not seeds:
        raise ValueError("at least one split seed is needed, e.g. 0,1,2,3,4")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ValueError(f"split seeds must be non-negative integers, not {negative[0]}")
    return list(dict.fromkeys(seeds))
