"""Exporting a registered version: a damaged copy already in the model store is never served."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from app.recommender.bundle import point_latest
from app.registry.export import export_version
from app.registry.mlflow_registry import Registry, RegistryError, default_artifact_root, default_tracking_uri
from tests.helpers import fail_for_path, register_bundle

pytestmark = pytest.mark.unit


def _registered(tmp_path: Path, store: Path) -> tuple[Registry, str, Path]:
    """A registry with one version whose bundle is the store's own (old) bundle, as after a run."""
    import shutil

    var = tmp_path / "var"
    (var / "mlflow").mkdir(parents=True)
    registry = Registry(default_tracking_uri(var), artifact_root=default_artifact_root(var))
    info = register_bundle(registry, store)
    bundle = (store / "latest").resolve()
    served = tmp_path / "served"
    shutil.copytree(bundle, served / bundle.name)
    return registry, info.version, served / bundle.name


def test_a_rollback_to_a_damaged_copy_in_the_model_store_is_refused(
    tmp_path: Path, personal_model_store: Path, synthetic_data: Any
) -> None:
    """Rollback (`movierec promote --version N`) finds N's bundle already in the model store and
    used to move `latest` to it unchecked: a damaged copy became what the service loads at its
    next start. It is validated like a downloaded one; `latest` stays where it was."""
    import shutil

    registry, version, copy = _registered(tmp_path, personal_model_store)
    store = copy.parent
    other = store / "20200101T000000-000000"
    shutil.copytree(copy, other)
    point_latest(store, other.name)
    (copy / "segment_top.npy").write_bytes(b"damaged")
    with pytest.raises(RegistryError, match=r"segment_top\.npy"):
        export_version(registry, version, store)
    assert (store / "latest").resolve().name == other.name


def test_a_rollback_to_a_sound_copy_in_the_model_store_moves_latest(
    tmp_path: Path, personal_model_store: Path
) -> None:
    registry, version, copy = _registered(tmp_path, personal_model_store)
    assert export_version(registry, version, copy.parent) == copy
    assert (copy.parent / "latest").resolve() == copy.resolve()


def test_a_bundle_version_tag_that_is_not_a_bundle_name_is_refused(
    tmp_path: Path, personal_model_store: Path
) -> None:
    """The registry's bundle_version tag became a path in the model store unchecked: a tag of
    ``../elsewhere`` (anyone with write access to the registry can set one) exported outside it."""
    registry, version, _copy = _registered(tmp_path, personal_model_store)
    registry.client.set_model_version_tag(registry.model_name, version, "bundle_version", "../elsewhere")
    store = tmp_path / "store"
    with pytest.raises(RegistryError, match="not a bundle name"):
        export_version(registry, version, store)
    assert not (tmp_path / "elsewhere").exists() and not (store / "latest").exists()


def test_an_export_removes_the_staging_a_killed_export_left(
    tmp_path: Path, personal_model_store: Path
) -> None:
    """An export killed mid-download (SIGKILL, OOM) left ``.export-<version>-<random>`` in the
    model store for ever. The next export removes it once nothing in it changed for an hour, as
    a bundle write does; a fresh one (another export at work) and other entries stay."""
    registry, version, _copy = _registered(tmp_path, personal_model_store)
    store = tmp_path / "store"
    long_ago = time.time() - 2 * 3600

    def staging(name: str, age: float) -> Path:
        (store / name / "bundle").mkdir(parents=True)
        (store / name / "bundle" / "model.pkl").write_bytes(b"half")
        for path in (store / name / "bundle" / "model.pkl", store / name / "bundle", store / name):
            os.utime(path, (age, age))
        return store / name

    stale = staging(".export-20260101T000000-abcdef-abcdefgh", long_ago)
    fresh = staging(".export-20260101T000001-abcdef-ijklmnop", time.time())
    other = staging(".deploy-abcdefgh", long_ago)
    exported = export_version(registry, version, store)
    assert not stale.exists() and fresh.is_dir() and other.is_dir()
    assert (store / "latest").resolve() == exported.resolve()


def _break_rating_model(bundle: Path) -> None:
    """A rating model fitted on a movie the catalogue lacks, its digest updated: the bundle loads
    (load_bundle), the service refuses it (attach_rating_model)."""
    import json

    import joblib
    import numpy as np

    from app.recommender.bundle import file_digests

    model = joblib.load(bundle / "rating_model.pkl")
    model.item_ids = np.array([10**9])
    joblib.dump(model, bundle / "rating_model.pkl")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = file_digests(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_rollback_to_a_bundle_whose_rating_model_the_service_refuses_is_refused(
    tmp_path: Path, personal_model_store: Path
) -> None:
    """The export loaded the bundle without its rating model: a rollback moved `latest` to a
    bundle the service refuses (the reload kept the old one, a restart served nothing)."""
    import shutil

    from app.recommender.bundle import load_bundle

    registry, version, copy = _registered(tmp_path, personal_model_store)
    store = copy.parent
    other = store / "20200101T000000-000000"
    shutil.copytree(copy, other)
    point_latest(store, other.name)
    _break_rating_model(copy)
    load_bundle(copy)  # loads without its rating model
    with pytest.raises(RegistryError, match=r"the service would refuse it.*rating_model\.pkl"):
        export_version(registry, version, store)
    assert (store / "latest").resolve().name == other.name


def test_an_export_of_a_registered_bundle_whose_rating_model_the_service_refuses_is_refused(
    tmp_path: Path, personal_model_store: Path
) -> None:
    import shutil

    from tests.serving_helpers import copy_store

    source = copy_store(personal_model_store, tmp_path / "trained")
    _break_rating_model((source / "latest").resolve())
    registry, version, copy = _registered(tmp_path, source)
    store = copy.parent
    shutil.rmtree(copy)  # not in the model store yet: downloaded from the registry
    with pytest.raises(RegistryError, match=r"the service would refuse it.*rating_model\.pkl"):
        export_version(registry, version, store)
    assert not (store / "latest").exists() and not copy.exists()
    assert [path.name for path in store.iterdir()] == []  # no staging left either


@pytest.mark.parametrize(
    "manifest",
    ["{not json", "", "\xff", '["a list"]', '"text"', "{}", '{"version": null}', '{"version": 3}'],
)
def test_served_version_of_a_garbled_manifest_is_none(tmp_path: Path, manifest: str) -> None:
    """A `latest/manifest.json` that is not JSON raised ValueError out of the pipeline's tick and
    the reload retry (a list or a string: AttributeError), and one without a version name read as
    the version "None"; all now say what a missing manifest says: nothing known is served."""
    from app.registry.export import served_version

    bundle = tmp_path / "store" / "20200101T000000-000000"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_bytes(manifest.encode("latin-1"))
    point_latest(tmp_path / "store", bundle.name)
    assert served_version(tmp_path / "store") is None
    assert served_version(tmp_path / "nothing") is None


def test_served_version_names_the_latest_bundle(tmp_path: Path) -> None:
    from app.registry.export import served_version

    bundle = tmp_path / "20200101T000000-000000"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"version": "20200101T000000-000000"}')
    point_latest(tmp_path, bundle.name)
    assert served_version(tmp_path) == "20200101T000000-000000"


class _Versions:
    """A registry's versions() only: the bundles it can export again."""

    def __init__(self, bundles: list[str]) -> None:
        from types import SimpleNamespace

        self._versions = [SimpleNamespace(bundle_version=name) for name in bundles]

    def versions(self) -> list[Any]:
        return self._versions


def _bundles(store: Path, names: list[str]) -> None:
    """Bundle directories (a manifest each) created and exported in the order of ``names``."""
    import json

    now = time.time()
    for n, name in enumerate(names):
        (store / name).mkdir(parents=True)
        created = f"2026-11-{10 + n}T03:00:00+00:00"
        (store / name / "manifest.json").write_text(json.dumps({"version": name, "created_at": created}))
        exported = now - 3600 * (len(names) - n)
        os.utime(store / name, (exported, exported))


def test_old_bundles_go_but_never_the_served_nor_the_unregistered_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every new champion the flow exported stayed in the model store for good (~17 MB each on
    ml-100k, one a day with daily feedback): the disk filled up. The flow now keeps the
    MOVIEREC_MODEL_KEEP_BUNDLES most recently exported and removes older ones, except the one
    ``latest`` names, the one the reload marker names (an admin's reload of a version), any a
    worker says it serves, the previous champion of each (the breaker's fallback), and any the
    registry does not hold (``make train``'s: no way back)."""
    import json
    import logging

    from app.registry.export import remove_old_bundles

    store = tmp_path / "model"
    registered = [f"2026120{n}T030000-00000{n}-ease" for n in range(9)]
    _bundles(store, ["20261130T000000-aaaaaa", *registered])  # make train's first, then the flow's
    (store / ".export-x-1").mkdir()
    point_latest(store, registered[3])  # a rollback: registered[2] is its fallback
    (store / ".serving.json").write_text(json.dumps({"target": str(store / registered[5])}))
    (store / ".serving-workers").mkdir()
    (store / ".serving-workers" / "h-1-a.json").write_text(json.dumps({"target": str(store / registered[0])}))
    with caplog.at_level(logging.INFO):
        removed = remove_old_bundles(_Versions(registered), store, keep=2)
    assert sorted(removed) == [registered[1], registered[6]]
    left = sorted(p.name for p in store.iterdir())
    assert left == sorted(
        [".export-x-1", ".serving-workers", ".serving.json", "latest", "20261130T000000-aaaaaa"]
        + [name for name in registered if name not in removed]
    )
    assert all(any(name in r.getMessage() for r in caplog.records) for name in removed), caplog.text
    assert remove_old_bundles(_Versions(registered), store, keep=0) == []


def test_old_bundles_stay_when_what_the_workers_serve_cannot_be_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from app.registry.export import remove_old_bundles

    store = tmp_path / "model"
    registered = [f"2026120{n}T030000-00000{n}-ease" for n in range(4)]
    _bundles(store, registered)
    point_latest(store, registered[-1])
    (store / ".serving-workers").mkdir()
    (store / ".serving-workers" / "h-1-a.json").write_text("{not json")
    assert remove_old_bundles(_Versions(registered), store, keep=1) == []
    assert all((store / name).is_dir() for name in registered)
    assert "h-1-a.json" in caplog.text


def test_an_old_bundle_whose_removal_fails_half_way_does_not_block_its_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal that fails half way (a file another user owns, an I/O error) left the bundle's
    directory without its manifest under the bundle's own name: no bundle to retention or the
    service, never removed again, and the export of that version (a rollback) then failed on it
    for good (os.replace onto a non-empty directory). The bundle is first renamed out of the
    way, under an export staging name that later exports sweep (remove_stale_leftovers)."""
    import shutil

    from app.recommender.bundle import EXPORT_STAGING_PREFIX
    from app.registry import export

    store = tmp_path / "model"
    registered = [f"2026120{n}T030000-00000{n}-ease" for n in range(3)]
    _bundles(store, registered)
    point_latest(store, registered[-1])

    def half_way(path: Any, *args: Any, **kwargs: Any) -> None:
        (Path(path) / "manifest.json").unlink()
        raise PermissionError(13, "Permission denied", str(Path(path) / "model.pkl"))

    monkeypatch.setattr(shutil, "rmtree", half_way)
    assert export.remove_old_bundles(_Versions(registered), store, keep=1) == registered[:1]
    assert not (store / registered[0]).exists(), "the half-removed bundle blocks its name"
    assert [p.name for p in store.iterdir() if p.name.startswith(EXPORT_STAGING_PREFIX)] != []


def test_old_bundles_keep_the_one_a_service_was_started_with(tmp_path: Path) -> None:
    """A service started with ML_MODEL_PATH naming one bundle of the store (a pinned rollback)
    loads that bundle again in every worker uwsgi starts. Its workers record what they serve
    only once they answer a request, and an admin reload since makes them record another one:
    retention removed the bundle, and the next recycled worker had no model (503 for all it
    answered). The bundle the flow's own ML_MODEL_PATH names, and the model path in the
    workers' records and the reload marker (``configured``), are kept too."""
    import json

    from app.registry.export import remove_old_bundles

    store = tmp_path / "model"
    registered = [f"2026120{n}T030000-00000{n}-ease" for n in range(8)]
    _bundles(store, registered)
    point_latest(store, registered[-1])
    (store / ".serving.json").write_text(
        json.dumps({"target": str(store / registered[6]), "configured": str(store / registered[1])})
    )
    (store / ".serving-workers").mkdir()
    (store / ".serving-workers" / "h-1-a.json").write_text(
        json.dumps({"target": str(store / registered[6]), "configured": str(store / registered[3])})
    )
    removed = remove_old_bundles(_Versions(registered), store, keep=1, configured=store / registered[0])
    assert removed == [registered[4]]  # 2, 5 and 0: the fallbacks of 3, 6 and 1
    for kept in (registered[0], registered[1], registered[2], registered[3]):
        assert (store / kept / "manifest.json").is_file(), kept


@pytest.mark.parametrize(
    "error", [PermissionError(13, "Permission denied"), OSError(116, "Stale file handle")]
)
def test_old_bundles_stay_when_the_model_store_cannot_be_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: OSError
) -> None:
    """A model store whose ``latest`` and records read but which cannot be listed (a directory
    of another account's this user may enter, a network mount gone stale) raised the OSError out
    of retention: the flow, whose champion was exported and reloaded, logged it as an ERROR with a
    traceback (a ``log.error`` alert) for what is housekeeping. It is the WARNING the other
    unreadable files give (nothing removed; the next export tries again), and nothing raises."""
    import logging

    from app.registry.export import remove_old_bundles

    store = tmp_path / "model"
    registered = [f"2026120{n}T030000-00000{n}-ease" for n in range(4)]
    _bundles(store, registered)
    point_latest(store, registered[-1])
    fail_for_path(monkeypatch, "iterdir", store, error)
    with caplog.at_level(logging.INFO):
        assert remove_old_bundles(_Versions(registered), store, keep=1) == []
    monkeypatch.undo()
    assert all((store / name / "manifest.json").is_file() for name in registered)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
    assert str(store) in warnings[0].getMessage() and error.strerror in warnings[0].getMessage()
