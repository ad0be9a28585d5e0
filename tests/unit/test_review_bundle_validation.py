"""A bundle whose tables or catalogue cannot be served is refused at load, not served as 500s.

``_validate`` checked shapes loosely and types not at all: positions stored as floats, one-
dimensional tables, scores stored as text or NaN for a listed movie, a catalogue repeating a
movie id, tables sized for another catalogue all loaded, were swapped in by a reload, and then
failed (500) or answered garbage on every request. A manifest that is not a JSON object or a
catalogue without its columns raised AttributeError/KeyError instead of BundleError: the
reload logged a traceback, an export from the registry crashed the pipeline with one.
The bundles below keep valid SHA-256 digests: only the content is wrong.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.recommender.bundle import BundleError, file_digests, load_bundle, resolve_bundle_dir
from tests.helpers import ADMIN_PASSWORD, login

pytestmark = pytest.mark.unit


def _manifest(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "manifest.json").read_text()))


def _write_manifest(directory: Path, manifest: Any) -> None:
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _resave(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        np.save(directory / f"{name}.npy", change(np.load(directory / f"{name}.npy")), allow_pickle=False)

    return mutate


def _first_column(directory: Path) -> None:
    for name in ("segment_top", "segment_scores"):
        _resave(name, lambda a: a[:, 0])(directory)


def _nan_first_score(scores: np.ndarray) -> np.ndarray:
    scores = scores.copy()
    scores[0, 0] = np.nan
    return scores


def _catalogue(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        catalogue = pd.read_csv(directory / "catalogue.csv", keep_default_na=False)
        change(catalogue).to_csv(directory / "catalogue.csv", index=False)

    return mutate


def _repeat_first_id(catalogue: pd.DataFrame) -> pd.DataFrame:
    catalogue.loc[1, "movie_id"] = catalogue.loc[0, "movie_id"]
    return catalogue


def _with_movies_of_another_catalogue(catalogue: pd.DataFrame) -> pd.DataFrame:
    other = catalogue.assign(movie_id=catalogue["movie_id"] + 100_000, title=catalogue["title"] + " (other)")
    return pd.concat([other, catalogue])


def _n_items(directory: Path) -> None:
    manifest = _manifest(directory)
    manifest["n_items"] = int(manifest["n_items"]) + 1
    _write_manifest(directory, manifest)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "positions stored as floats": _resave("segment_top", lambda a: a.astype(np.float64)),
    "one-dimensional segment tables": _first_column,
    "scores stored as text": _resave("segment_scores", lambda a: a.astype(str)),
    "a listed movie without a score": _resave("segment_scores", _nan_first_score),
    "user ids stored as floats": _resave("user_ids", lambda a: a.astype(np.float64)),
    "a user listed twice": _resave("user_ids", lambda a: np.concatenate([a[:1], a[:-1]])),
    "a catalogue repeating a movie id": _catalogue(_repeat_first_id),
    "a catalogue without titles": _catalogue(lambda c: c.drop(columns=["title"])),
    "tables of another catalogue": _catalogue(_with_movies_of_another_catalogue),
    "a manifest counting other movies": _n_items,
    "a manifest that is not an object": lambda d: _write_manifest(d, [_manifest(d)]),
}


def _damaged_copy(store: Path, target: Path, damage: Callable[[Path], None]) -> Path:
    shutil.copytree(resolve_bundle_dir(store), target)
    damage(target)
    manifest = json.loads((target / "manifest.json").read_text())
    if isinstance(manifest, dict):  # the digests match the damaged files: only the content is wrong
        manifest["files"] = file_digests(target)
        _write_manifest(target, manifest)
    return target


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_bundle_that_cannot_be_served_is_refused(
    damage: str, personal_model_store: Path, tmp_path: Path
) -> None:
    load_bundle(resolve_bundle_dir(personal_model_store))  # the undamaged bundle loads
    bundle = _damaged_copy(personal_model_store, tmp_path / "damaged", DAMAGE[damage])
    with pytest.raises(BundleError):
        load_bundle(bundle)


@pytest.mark.parametrize("damage", ["positions stored as floats", "a manifest that is not an object"])
def test_a_reload_to_such_a_bundle_is_422_and_the_old_one_keeps_serving(
    damage: str, make_app: Any, model_store: Path, tmp_path: Path
) -> None:
    from tests.serving_helpers import copy_store

    store = copy_store(model_store, tmp_path / "store")
    app = make_app(model_path=store)
    client = app.test_client()
    headers = login(client, ADMIN_PASSWORD)
    before = client.get("/api/model", headers=headers).get_json()["model_version"]
    _damaged_copy(store, store / "20990101T000000-bad000", DAMAGE[damage])

    answer = client.post(
        "/api/admin/reload", json={"version": "20990101T000000-bad000", "wait": True}, headers=headers
    )

    assert answer.status_code == 422, answer.get_json()
    assert answer.get_json()["error"]["code"] == "invalid_bundle"
    assert "unexpected error" not in answer.get_json()["error"]["message"]
    assert client.get("/api/model", headers=headers).get_json()["model_version"] == before
    served = client.post("/api/recommend", json={"age": 30, "gender": "M", "occupation": "other"},
                         headers=login(client))  # fmt: skip
    assert served.status_code == 200
