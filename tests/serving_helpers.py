"""Helpers for the serving tests: private copies of the session's model store to mutate."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from app.recommender.bundle import LATEST, point_latest, resolve_bundle_dir


def copy_store(model_store: Path, target: Path) -> Path:
    """A private model store holding a copy of the session bundle (reload tests write markers into it)."""
    bundle = resolve_bundle_dir(model_store)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, target / bundle.name)
    point_latest(target, bundle.name)
    return target


def add_version(
    store: Path, version: str, mutate: Callable[[Path], None] | None = None, latest: bool = True
) -> Path:
    """Copy the store's current bundle under a new version name, optionally damage it, point latest at it."""
    source = (store / LATEST).resolve()
    target = store / version
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))
    if mutate is not None:
        mutate(target)
    if latest:
        point_latest(store, version)
        # the marker-vs-latest comparison works on mtimes; make the new link visibly newer
        os.utime(store / LATEST, follow_symlinks=False)
    return target
