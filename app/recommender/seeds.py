"""The split seeds of EVALUATION.md, apart from evaluation.py so the CLI can name them as option
defaults without importing NumPy, pandas and every model (about a second per command)."""

from __future__ import annotations

STANDARD_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
REFERENCE_SEED = 42
