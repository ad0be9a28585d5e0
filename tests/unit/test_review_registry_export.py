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

pytestmark = pytest.mark.unit


def _registered(tmp_path: Path, store: Path) -> tuple[Registry, str, Path]:
    """A registry with one version whose bundle is the store's own (old) bundle, as after a run."""
    import shutil

    var = tmp_path / "var"
    (var / "mlflow").mkdir(parents=True)
    registry = Registry(default_tracking_uri(var), artifact_root=default_artifact_root(var))
    parent = registry.start_pipeline_run({"data_hash": "d"})
    run = registry.start_candidate_run(parent, "most_liked", {})
    bundle = (store / "latest").resolve()
    registry.upload_candidate_artifacts(run, bundle, [], registry.artifact_uri(run))
    info = registry.register(run, {"bundle_version": bundle.name, "candidate": "most_liked"})
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
