"""From score matrices to ranked lists: top-N with exclusions, vectorised."""

from __future__ import annotations

import numpy as np


def top_n(scores: np.ndarray, n: int, exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """Column indices of the ``n`` best scores per row, best first.

    ``exclude`` optionally gives, per row, column indices that must not appear (movies a
    user already rated). Ties break by column order, so results are deterministic.
    Rows with fewer than ``n`` eligible columns are padded with -1.
    """
    scores = np.array(scores, dtype=np.float64, copy=True, ndmin=2)
    if exclude is not None:
        for row, columns in enumerate(exclude):
            if len(columns):
                scores[row, columns] = -np.inf
    n_cols = scores.shape[1]
    n = min(n, n_cols)
    if n <= 0:
        return np.empty((scores.shape[0], 0), dtype=np.int64)
    # A stable sort keeps ties in column order, so rankings are reproducible everywhere.
    best = np.argsort(-scores, axis=1, kind="stable")[:, :n].astype(np.int64)
    invalid = ~np.isfinite(np.take_along_axis(scores, best, axis=1))
    best[invalid] = -1
    return best
