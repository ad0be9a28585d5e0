"""The served model: one loaded bundle per process, swapped atomically.

A new bundle is loaded and validated completely before the reference is replaced; requests
read the reference once, so each request sees exactly one model version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from app.recommender.bundle import (
    BundleError,
    LoadedBundle,
    attach_rating_model,
    load_bundle,
    release_extraction,
)
from app.recommender.data import DataUnavailableError, find_local

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
        try:
            data = find_local(self.data_dir)
        except DataUnavailableError as exc:  # there but unusable: a bundle refused, not a traceback
            raise BundleError(
                f"{target} takes its titles from the local data set, which cannot be read: {exc}"
            ) from exc
        return data.items if data is not None else None

    def load(self, path: Path | None = None) -> LoadedBundle:
        """Load ``path`` (default: the configured one) and swap it in; raise and keep the old on failure.

        A refusal is not logged here: each caller reports it once, with what it means there (the
        start: "not ready"; a reload: "the previous bundle keeps serving"). Logged here as well, it
        was a second ERROR for the same event, and monitor-docker mails every ERROR line."""
        target = path or self.path
        with self._lock:
            try:
                bundle = load_bundle(target, self._catalogue_for_single_files(target))
                attach_rating_model(bundle)
            except BundleError as exc:
                self.last_error = str(exc)
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
