"""Publishing a bundle is durable: its files and directories are synced before the rename that
publishes it, and the model store's directory after that rename and after ``latest`` moves.

Nothing was synced: after a power loss or a kernel crash, ``latest`` could name a bundle whose
files were empty or truncated; the service refused it at start and the export said "damaged,
remove ..." until someone removed it by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import pytest

from app.recommender.bundle import LATEST, load_bundle, point_latest, write_bundle
from app.registry.export import export_version
from tests.helpers import record_fsyncs_and_renames
from tests.unit.test_review_registry_export import _registered

pytestmark = pytest.mark.unit


def _renamed_to(events: list[tuple[str, ...]], destination: Path) -> int:
    """The index of the (last) rename onto ``destination``."""
    found = [i for i, event in enumerate(events) if event[0] == "rename" and event[2] == str(destination)]
    assert found, f"nothing was renamed to {destination}: {events}"
    return found[-1]


def _synced(events: list[tuple[str, ...]]) -> list[str]:
    return [event[1] for event in events if event[0] == "fsync"]


def _tree(directory: Path) -> list[Path]:
    """Every file and directory of ``directory``, itself included."""
    return [directory, *sorted(directory.rglob("*"))]


def assert_published_durably(events: list[tuple[str, ...]], store: Path, bundle: Path) -> None:
    """Every file and directory of ``bundle`` was synced before the rename that made it
    ``store/<name>``; the store was synced after it, and after ``latest`` moved."""
    store, bundle = store.resolve(), bundle.resolve()
    published = _renamed_to(events, bundle)
    staging = Path(events[published][1])
    before = _synced(events[:published])
    unsynced = [str(path) for path in _tree(bundle) if str(staging / path.relative_to(bundle)) not in before]
    assert not unsynced, f"not synced before the rename that published {bundle.name}"
    swap = _renamed_to(events, store / LATEST)
    assert published < swap
    assert str(store) in _synced(events[published:swap]), "the bundle's name in the store"
    assert str(store) in _synced(events[swap:]), "the latest swap itself"


def _copy_args(model_store: Path) -> tuple[Any, ...]:
    bundle = load_bundle(model_store)
    model = joblib.load(bundle.path / "model.pkl")
    return model, bundle.catalogue, bundle.tables, {"served_model": bundle.manifest["served_model"]}, {}


def test_a_written_bundle_is_synced_before_it_is_renamed_into_the_store_and_latest_moves(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`movierec train` (`make train`), the pipeline's candidates and deploy write through here."""
    store = tmp_path / "store"
    events = record_fsyncs_and_renames(monkeypatch)
    written = write_bundle(store, *_copy_args(model_store))
    assert_published_durably(events, store, written)


def test_a_bundle_written_without_moving_latest_is_synced_with_its_name(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's candidates (``set_latest=False``): exported later, so durable when written."""
    store = tmp_path / "store"
    events = record_fsyncs_and_renames(monkeypatch)
    written = write_bundle(store, *_copy_args(model_store), set_latest=False).resolve()
    published = _renamed_to(events, written)
    staging = Path(events[published][1])
    before = _synced(events[:published])
    assert all(str(staging / path.relative_to(written)) in before for path in _tree(written))
    assert str(store.resolve()) in _synced(events[published:])


def test_an_exported_bundle_is_synced_before_it_is_renamed_into_the_store_and_latest_moves(
    tmp_path: Path, personal_model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`movierec promote`, the pipeline's export of a new champion."""
    registry, version, _copy = _registered(tmp_path, personal_model_store)
    store = tmp_path / "store"
    events = record_fsyncs_and_renames(monkeypatch)
    exported = export_version(registry, version, store)
    assert_published_durably(events, store, exported)


def test_latest_is_moved_to_a_bundle_already_in_the_store_only_once_it_is_on_disk(
    tmp_path: Path, personal_model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback (an export finding the bundle in the store, ``promote``'s undo, deploy) moves
    ``latest`` to a bundle written earlier, maybe by a release that never synced it."""
    _registry, _version, copy = _registered(tmp_path, personal_model_store)
    store = copy.parent.resolve()
    events = record_fsyncs_and_renames(monkeypatch)
    point_latest(store, copy.name)
    swap = _renamed_to(events, store / LATEST)
    before = _synced(events[:swap])
    assert all(str(path) in before for path in _tree(copy.resolve()))
    assert str(store) in _synced(events[swap:])


def test_the_reload_marker_is_synced_before_it_is_renamed_and_with_its_name(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker names the bundle an admin's reload chose (a rollback): lost or emptied by a crash,
    the restarted service served ``latest`` instead."""
    from app.services.models import ModelHolder
    from app.services.reload import ModelReloader
    from tests.serving_helpers import copy_store

    store = copy_store(model_store, tmp_path / "store").resolve()
    holder = ModelHolder(store)
    holder.load()
    reloader = ModelReloader(holder, store, poll_interval=3600)
    events = record_fsyncs_and_renames(monkeypatch)
    reloader._write_marker((store / LATEST).resolve(), "v")
    marker = store / ".serving.json"
    written = _renamed_to(events, marker)
    assert events[written][1] in _synced(events[:written])
    assert str(store) in _synced(events[written:])
    assert json.loads(marker.read_text())["version"] == "v"
