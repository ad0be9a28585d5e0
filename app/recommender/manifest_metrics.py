"""A bundle manifest's offline metrics (``metrics``: per candidate, protocol A and B summaries),
read as rows: for the dashboard's table, and for the registry's comparison of two bundles.

Pure reading of a manifest, so the registry and the pipeline need neither the web dashboard nor
the serving layer to compare bundles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

K = 10


@dataclass(frozen=True)
class MetricRow:
    """One candidate's offline figures from a bundle manifest (protocol A unless named B)."""

    model: str
    served: bool
    ndcg_mean: float | None
    ndcg_sd: float | None
    precision: float | None
    recall: float | None
    hit_rate: float | None
    coverage: float | None
    rmse: float | None
    ndcg_b: float | None


def _number(value: Any) -> float | None:
    """A finite float or None: manifests from other tools may hold nulls, strings or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def served_row(manifest: Mapping[str, Any]) -> MetricRow | None:
    """The metrics of the model a bundle serves (None when its manifest has none)."""
    return next((row for row in metric_rows(manifest) if row.served), None)


def metric_rows(manifest: Mapping[str, Any]) -> list[MetricRow]:
    """The manifest's per-candidate metrics as table rows, the served model first."""
    served = str(manifest.get("served_model") or "")
    metrics = manifest.get("metrics")
    if not isinstance(metrics, Mapping):
        return []
    rows = []
    for name, entry in metrics.items():
        if not isinstance(entry, Mapping):
            continue
        a: Mapping[str, Any] = entry["A"] if isinstance(entry.get("A"), Mapping) else {}
        b: Mapping[str, Any] = entry["B"] if isinstance(entry.get("B"), Mapping) else {}
        rows.append(
            MetricRow(
                model=str(name),
                served=name == served,
                ndcg_mean=_number(a.get(f"ndcg@{K}_mean")),
                ndcg_sd=_number(a.get(f"ndcg@{K}_sd")),
                precision=_number(a.get(f"precision@{K}_mean")),
                recall=_number(a.get(f"recall@{K}_mean")),
                hit_rate=_number(a.get(f"hit_rate@{K}_mean")),
                coverage=_number(a.get(f"coverage@{K}_mean")),
                rmse=_number(a.get("rmse_mean")),
                ndcg_b=_number(b.get(f"ndcg@{K}_mean")),
            )
        )
    rows.sort(key=lambda row: (not row.served, -(row.ndcg_mean or 0.0), row.model))
    return rows
