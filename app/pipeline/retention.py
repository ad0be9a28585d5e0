"""Retention of the registry's runs and of the Metaflow datastore, after each successful flow.

Every pipeline run left, under the var root, each candidate's MLflow run with its bundle and
reports (~1 MB a run on the tests' synthetic data; every candidate's bundle — up to ~17 MB each
on ml-100k, eight candidates by default — on real data) and Metaflow's run directory (task
logs, metadata) with the blobs of its artifacts (the ingested ratings among them): a daily
schedule filled its disk over months. After a successful flow the launcher, still holding the
flow lock (so no flow of this var root, nor ``movierec promote``, runs meanwhile), keeps the
newest ``MOVIEREC_PIPELINE_KEEP_RUNS`` pipeline runs and removes the older ones:

- MLflow: the artifacts of the candidate runs of older pipeline runs are removed and the runs
  then marked deleted (:meth:`~app.registry.mlflow_registry.Registry.delete_run`), then the
  pipeline run itself, except the runs of the versions in use (:func:`versions_in_use`), whose
  pipeline run stays with them. The versions' records stay in the registry, tagged
  ``artifacts_removed`` (before their artifacts go). Killed part way, a run is still active, so
  the next pass does it again.
- Metaflow: the run directories older than the newest kept (never the flow just run, nor one
  written in during the last hour: a flow started by hand, outside the lock), then the data
  blobs no remaining run refers to (and none written in the last hour).

A failure is logged (ERROR, with its traceback) and never fails the run: the models are
released by then, and the next run tries again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from app.config import Settings
from app.registry.mlflow_registry import CHAMPION, Registry, VersionInfo

log = logging.getLogger(__name__)

QUIET_SECONDS = 3600.0
"""A Metaflow run directory or blob written in more recently may belong to a flow started by hand
(``python -m app.pipeline.flow run``, outside the flow lock) that is running now: it is kept."""
_MIB = 1024 * 1024


def apply_retention(settings: Settings, owner: str, current_run: str | None) -> None:
    """Both retentions after a successful flow (``current_run``: its Metaflow run id); never raises."""
    if settings.pipeline_keep_runs <= 0:
        return
    try:
        prune_mlflow(settings, owner)
    except Exception:
        log.exception(
            "could not remove the MLflow runs older than the newest %d pipeline runs "
            "(MOVIEREC_PIPELINE_KEEP_RUNS); the run succeeded, the next one tries again",
            settings.pipeline_keep_runs,
        )
    try:
        prune_metaflow(settings, current_run)
    except Exception:
        log.exception(
            "could not remove the Metaflow runs older than the newest %d (MOVIEREC_PIPELINE_KEEP_RUNS) "
            "from %s; the run succeeded, the next one tries again",
            settings.pipeline_keep_runs, metaflow_flow_root(settings),
        )  # fmt: skip


def versions_in_use(versions: list[VersionInfo], model_dir: Path | str) -> set[str]:
    """The versions whose artifacts retention keeps: every one an alias names (``champion``,
    ``challenger``, any other), every one whose bundle is in the model store (served, the breaker's
    fallback — the previous champion —, or kept for a rollback there), and the newest promoted one
    besides the champion (the previous champion, for a store that no longer holds it)."""
    in_use = {info.version for info in versions if info.aliases}
    store = Path(model_dir)
    bundles = {child.name for child in store.iterdir()} if store.is_dir() else set()
    in_use |= {info.version for info in versions if info.bundle_version and info.bundle_version in bundles}
    promoted = [info for info in versions if info.decision == "promoted" and CHAMPION not in info.aliases]
    if promoted:
        in_use.add(max(promoted, key=lambda info: int(info.version)).version)
    return in_use


def prune_mlflow(settings: Settings, owner: str) -> list[str]:
    """Remove the artifacts of, and mark deleted, the MLflow runs of ``owner``'s pipeline runs older
    than the newest ``pipeline_keep_runs``, but those of the versions in use; the run ids removed."""
    keep = settings.pipeline_keep_runs
    registry = Registry.from_settings(settings)
    versions = registry.versions()  # RegistryError when unreadable: then nothing is removed
    in_use = versions_in_use(versions, settings.model_dir)
    by_run: dict[str, list[VersionInfo]] = {}
    for info in versions:
        if info.run_id:
            by_run.setdefault(info.run_id, []).append(info)
    needed = {info.run_id for info in versions if info.version in in_use and info.run_id}
    removed: list[str] = []
    pipelines = freed = 0
    for pipeline, candidates in registry.old_pipeline_runs(owner, keep):
        kept = False
        for run in candidates:
            if run.info.run_id in needed:
                kept = True
                continue
            freed += registry.delete_run(run, by_run.get(run.info.run_id, ()))
            removed.append(run.info.run_id)
        if not kept:  # the pipeline run of a version in use stays with it (its reports, its tags)
            freed += registry.delete_run(pipeline, by_run.get(pipeline.info.run_id, ()))
            pipelines += 1
    if removed or pipelines:
        log.info(
            "removed %d MLflow pipeline runs and %d candidate runs (marked deleted, their artifacts removed: "
            "%.1f MiB freed) older than the newest %d pipeline runs kept (MOVIEREC_PIPELINE_KEEP_RUNS); "
            "kept those of the versions in use: %s",
            pipelines, len(removed), freed / _MIB, keep,
            ", ".join(f"v{v}" for v in sorted(in_use, key=int)) or "none",
        )  # fmt: skip
    return removed


def metaflow_flow_root(settings: Settings) -> Path:
    """The training flow's directory in the local Metaflow datastore (app/pipeline/runner.py sets it)."""
    from app.pipeline.runner import FLOW_NAME

    return Path(settings.var_dir).resolve() / "metaflow" / ".metaflow" / FLOW_NAME


def _last_write(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it."""
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _size(path: Path) -> int:
    if path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())


def prune_metaflow(settings: Settings, current_run: str | None) -> list[str]:
    """Remove the Metaflow run directories older than the newest ``pipeline_keep_runs``, then the
    data blobs no remaining run refers to; the run ids removed."""
    keep = settings.pipeline_keep_runs
    root = metaflow_flow_root(settings)
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: int(p.name))
    latest = (root / "latest_run").read_text().strip() if (root / "latest_run").is_file() else None
    cutoff = time.time() - QUIET_SECONDS
    removed: list[str] = []
    freed = 0
    for run in runs[: max(0, len(runs) - keep)]:
        if run.name in (current_run, latest) or _last_write(run) > cutoff:
            continue
        size = _size(run)
        shutil.rmtree(run)
        freed += size
        removed.append(run.name)
    blobs, blob_bytes = _remove_unreferenced_blobs(root, cutoff)
    if removed or blobs:
        log.info(
            "removed %d Metaflow runs older than the newest %d kept (MOVIEREC_PIPELINE_KEEP_RUNS) and %d "
            "data blobs no kept run refers to from %s: %.1f MiB freed",
            len(removed), keep, blobs, root, (freed + blob_bytes) / _MIB,
        )  # fmt: skip
    return removed


def _remove_unreferenced_blobs(root: Path, cutoff: float) -> tuple[int, int]:
    """Remove the content-addressed blobs (``data/<xx>/<sha>`` and its ``_meta``) that no task of a
    remaining run refers to (its ``<attempt>.data.json``); nothing when one of those cannot be
    read (what it refers to is not known)."""
    referenced: set[str] = set()
    for data in root.glob("*/*/*/*.data.json"):
        try:
            objects = json.loads(data.read_text()).get("objects", {})
        except FileNotFoundError:
            continue  # removed meanwhile
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("not removing Metaflow data blobs: %s cannot be read (%s)", data, exc)
            return 0, 0
        referenced |= {str(sha) for sha in objects.values()}
    count = freed = 0
    for blob in sorted((root / "data").glob("*/*")):
        sha = blob.name.removesuffix("_meta")
        if sha in referenced or blob.is_dir():
            continue
        try:
            if blob.lstat().st_mtime > cutoff:
                continue
            size = blob.lstat().st_size
            blob.unlink()
        except FileNotFoundError:
            continue
        freed += size
        count += not blob.name.endswith("_meta")
    return count, freed
