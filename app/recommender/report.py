"""Evaluation reports on disk: JSON for machines, a PNG bar chart for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.durable import written_beside
from app.recommender.evaluation import K, averaged_seeds, seed_label


def write_report(report: dict[str, Any], out: Path | str) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and a PNG of NDCG@10 per model (mean ± sd) beside it.

    Each is written beside its name and renamed into place once whole, the plot first: a write
    cut short (a full disk, Ctrl-C while the plot is saved) left a truncated report over an
    earlier run's complete one, which a reader took for a report. Now the earlier pair stays,
    and the partial file is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot_path(out)
    with written_beside(png) as partial:
        plot_report(report, partial, format="png")
    with written_beside(out) as partial:
        partial.write_text(json.dumps(report, indent=2, sort_keys=True))
    return out, png


def plot_path(out: Path) -> Path:
    """Where :func:`write_report` puts the plot of the JSON report ``out``: its suffix made .png."""
    return out.with_suffix(".png")


def plot_report(report: dict[str, Any], path: Path | str, format: str | None = None) -> Path:
    """The PNG of ``report`` at ``path`` (``format``: the file type, when ``path``'s suffix is not it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["models"])
    k = report.get("k", K)  # its metrics are keyed at the k it was evaluated at
    metrics = [f"ndcg@{k}", f"precision@{k}", f"recall@{k}", f"hit_rate@{k}"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.0), dpi=100)
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        means = [report["models"][n]["summary"][f"{metric}_mean"] for n in names]
        sds = [report["models"][n]["summary"][f"{metric}_sd"] for n in names]
        positions = [x + (i - (len(metrics) - 1) / 2) * width for x in range(len(names))]
        ax.bar(positions, means, width, yerr=sds, capsize=2, label=metric)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    # the bars average the summary's seeds (0-4 of a default run, seed 42 beside them), as the table's column
    ax.set_ylabel(f"mean ± sd over split seeds {seed_label(averaged_seeds(report))}")
    ax.set_title(
        f"Protocol {report['protocol']} (k={report['k']}, seeds {', '.join(map(str, report['seeds']))})"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format=format)
    plt.close(fig)
    return Path(path)
