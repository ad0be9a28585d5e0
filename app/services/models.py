"""The served model: one loaded bundle per process, swapped atomically.

A new bundle is loaded and validated completely before the reference is replaced; requests
read the reference once, so each request sees exactly one model version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd

from app.recommender.bundle import BundleError, LoadedBundle, load_bundle, release_extraction
from app.recommender.data import find_local
from app.recommender.models.base import Recommender

RATING_MODEL_FILE = "rating_model.pkl"

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, path: Path, data_dir: Path | None = None) -> None:
        self.path = path
        self.data_dir = data_dir
        self._bundle: LoadedBundle | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        # called with a bundle that loaded, before it is swapped in (the circuit breaker reads
        # that version's state, so a version it had tripped does not serve a request first)
        self.before_swap: Callable[[LoadedBundle], None] | None = None

    @property
    def bundle(self) -> LoadedBundle | None:
        return self._bundle

    def require(self) -> LoadedBundle:
        bundle = self._bundle
        if bundle is None:
            raise BundleError(self.last_error or f"no model loaded from {self.path}")
        return bundle

    def _catalogue_for_single_files(self, target: Path) -> pd.DataFrame | None:
        """A bare model.pkl has no titles; take them from local data (never fetched at serve time)."""
        if target.is_dir() or self.data_dir is None:
            return None
        data = find_local(self.data_dir)
        return data.items if data is not None else None

    def load(self, path: Path | None = None) -> LoadedBundle:
        """Load ``path`` (default: the configured one) and swap it in; raise and keep the old on failure."""
        target = path or self.path
        with self._lock:
            try:
                bundle = load_bundle(target, self._catalogue_for_single_files(target))
                attach_rating_model(bundle)
            except BundleError as exc:
                self.last_error = str(exc)
                log.error("model bundle refused", extra={"path": str(target), "reason": str(exc)[:300]})
                raise
            if self.before_swap is not None:
                try:
                    self.before_swap(bundle)
                except Exception:
                    log.exception(
                        "preparing for the new bundle failed", extra={"model_version": bundle.version}
                    )
            previous = self._bundle
            self._bundle = bundle
            self.last_error = None
        if previous is not None and previous is not bundle:
            # requests still holding it serve from memory: its private .tar.gz extraction, if
            # this process made one, is no longer needed (else it stayed until exit)
            release_extraction(previous)
        log.info(
            "model loaded",
            extra={
                "model_version": bundle.version,
                "previous_version": previous.version if previous else None,
            },
        )
        return bundle


def attach_rating_model(bundle: LoadedBundle) -> None:
    """Load and check the bundle's rating regressor (for /api/predict/*) before the bundle is served.

    ``rating_model.pkl`` when the bundle has one; else the served model itself when it serves
    records (a bundle whose manifest names ``model.pkl``). A broken rating model makes the whole
    bundle invalid: a reload refuses it and the old one stays. Bundles without any rating model
    still serve recommendations; /api/predict/* then answers 503. So do those whose served model
    predicts ratings but not from records (the seed's forest, and bundles written before
    ``serves_records`` named it ``model.pkl``): that was a 500 on every prediction, or, at load,
    the whole bundle refused.
    """
    if bundle.model is not None and bundle.model.serves_records:
        bundle.rating_model = bundle.model
        return
    if not bundle.path.is_dir():
        return
    candidate = bundle.path / RATING_MODEL_FILE
    if not candidate.is_file():
        declared = bundle.manifest.get("rating_model") or {}
        if declared.get("file") != "model.pkl" or bundle.model is not None:  # the served model, checked above
            return
        candidate = bundle.path / "model.pkl"
    try:
        model = joblib.load(candidate)  # nosec B301 - bundles come from our own training
    except Exception as exc:
        raise BundleError(f"{candidate} could not be unpickled: {exc}") from exc
    if candidate.name == "model.pkl" and isinstance(model, Recommender) and not model.serves_records:
        return  # the served ranker, named by a bundle written before ``serves_records`` existed
    if not isinstance(model, Recommender) or not model.serves_records:
        raise BundleError(f"{candidate} does not hold a rating model that can serve predictions")
    item_ids = np.asarray(getattr(model, "item_ids", []))
    if len(item_ids) == 0 or not np.isin(item_ids, bundle.movie_ids).all():
        raise BundleError(f"{candidate} was fitted on movies that are not in the bundle's catalogue")
    probe = {"age": 30, "gender": "M", "occupation": "other", "movie_id": int(item_ids[0])}
    try:
        predicted = model.predict_records([probe])
    except Exception as exc:
        raise BundleError(f"{candidate} cannot predict: {exc}") from exc
    if predicted.shape != (1,) or not np.isfinite(predicted).all():
        raise BundleError(f"{candidate} predicts {predicted!r} for a valid record")
    bundle.rating_model = model
