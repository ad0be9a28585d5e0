"""What /api/recommend serves while the circuit breaker keeps the champion out.

Preferred: the **previous champion** — the newest bundle in the model store created before
the one being served (the store receives every champion the pipeline exports and keeps the
old ones). It was good enough to serve before, and its lists are as personal as its tables
allow. Loaded once per serving version by the worker's online-monitor thread
(:meth:`Fallback.previous`), when the breaker of the version served is not closed or a request
needed the fallback (a champion call that raised), and kept while its serving version is served
(and one reload longer: :data:`KEPT_VERSIONS`). One that fails to load is tried again in such a
round after a back-off (:data:`RETRY_SECONDS`, doubled up to :data:`RETRY_MAX_SECONDS`); until
2026-12-07 not before the next reload. A request never loads it nor waits for it: until
it is loaded, the fallback's lists are the popularity ones below. Reporting it
(:meth:`Fallback.describe`, for /api/model and the dashboard) reads the store's manifests only:
it loaded the bundle, a second one in every worker's memory, at each monitoring poll.

Otherwise (no older bundle, it failed to load and no later try has loaded it yet, or
``breaker_fallback = "popularity"``):
**global popularity computed from the served bundle's own tables** — a Borda count of
every segment's ranked list (a movie high in many segments' lists is broadly liked). For a
known user the candidates are that user's own list (which excludes what they already
rated), re-ordered by popularity, so the fallback never shows a rated movie either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import NotFound
from app.monitoring.logs import describe_error
from app.recommender.bundle import (
    BundleError,
    LoadedBundle,
    Recommendation,
    RecommendQuery,
    load_bundle,
    read_manifest,
)
from app.recommender.segments import Segment

log = logging.getLogger(__name__)

PREVIOUS, POPULARITY = "previous", "popularity"
KEPT_VERSIONS = 2
"""Serving versions whose previous champion and popularity order are kept: the one served and the
one before it (a request that began before a reload still finishes on it). Every reload serves a
new version, so keeping them all held one more bundle in memory per retraining."""
RETRY_SECONDS = 30.0
RETRY_MAX_SECONDS = 300.0
"""A previous champion that failed to load is tried again (by :meth:`Fallback.previous`, in the
monitor's thread) RETRY_SECONDS later, the wait doubled at each failure up to RETRY_MAX_SECONDS:
a file unreadable for a while no longer leaves popularity serving until the next reload, and
one that stays broken is read once every few minutes, not at each round (``monitor_sync_seconds``)."""
_MISSING = object()


def popularity_order(bundle: LoadedBundle) -> np.ndarray:
    """Catalogue positions ordered by a Borda count over the segment tables (best first).

    A movie at rank r in a table of depth d earns d - r points in each segment; ties keep
    catalogue order. Movies that appear in no segment list come last, in catalogue order.
    """
    top = bundle.tables.segment_top
    depth = top.shape[1]
    points = np.zeros(len(bundle.movie_ids), dtype=np.float64)
    weights = np.broadcast_to(np.arange(depth, 0, -1, dtype=np.float64), top.shape)
    valid = top >= 0
    np.add.at(points, top[valid], weights[valid])
    return np.argsort(-points, kind="stable")


def previous_bundle_dir(store: Path, version: str, created: str) -> Path | None:
    """The newest bundle in ``store`` created before bundle ``version`` (created at ``created``, its
    manifest's ``created_at``): the previous champion, which the fallback serves. The model store's
    retention keeps it for every bundle served (app/registry/export.py remove_old_bundles)."""
    found = _previous_in_store(store, version, created)
    return found[0] if found else None


def _previous_in_store(store: Path, version: str, created: str) -> tuple[Path, str] | None:
    """:func:`previous_bundle_dir` and that bundle's version (its manifest's), from the manifests only.

    An OSError when the store cannot be listed (a volume root or a directory of another account's,
    mode 700): not known, unlike a store that does not exist. An entry that cannot be looked at (a
    store that may be listed but not entered) is skipped, but when nothing was found its error is
    raised: the previous champion may be the entry skipped. A bundle whose manifest cannot be read
    (written with umask 077 by another account) is no bundle this service can serve: skipped."""
    try:
        if not store.is_dir():
            return None
        entries = list(store.iterdir())
    except FileNotFoundError:  # removed meanwhile
        return None
    best: tuple[str, Path, str] | None = None
    skipped: OSError | None = None
    for candidate in entries:
        try:
            if candidate.name.startswith(".") or candidate.is_symlink() or not candidate.is_dir():
                continue
        except OSError as exc:  # is_dir() answers False for a missing path, but raises for EACCES
            skipped = skipped or exc
            continue
        manifest = read_manifest(candidate)
        if manifest is None:
            continue
        stamp = str(manifest.get("created_at") or "")
        if str(manifest.get("version")) == version or not stamp or (created and stamp >= created):
            continue
        if best is None or stamp > best[0]:
            best = (stamp, candidate, str(manifest.get("version") or candidate.name))
    if best is None and skipped is not None:
        raise skipped
    return (best[1], best[2]) if best else None


class Fallback:
    """Fallback recommendations for the bundle being served (see the module docstring)."""

    def __init__(
        self, store: Path | None, mode: str = PREVIOUS, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if mode not in (PREVIOUS, POPULARITY):
            raise ValueError(f"fallback must be {PREVIOUS!r} or {POPULARITY!r}, not {mode!r}")
        self.store = store
        self.mode = mode
        self._clock = clock
        self._lock = threading.Lock()  # held while a bundle loads: by the monitor thread only
        self._popularity_lock = threading.Lock()  # not the one held while a bundle loads
        # serving version -> previous bundle (None: there is none, or it cannot load) / popularity
        # order, the newest KEPT_VERSIONS
        self._previous: OrderedDict[str, LoadedBundle | None] = OrderedDict()
        self._popularity: OrderedDict[str, np.ndarray] = OrderedDict()
        # the serving version whose fallback a request needed before its previous champion was
        # loaded (a champion call that raised under a closed breaker): the monitor loads it
        self._wanted: str | None = None
        # serving version (in ``_previous``) whose previous champion failed to load -> (when
        # it is tried again, by ``clock``; the wait before that try)
        self._retry: dict[str, tuple[float, float]] = {}

    def previous_bundle_dir(self, current: LoadedBundle) -> Path | None:
        """The newest bundle in the store created before ``current`` (by manifest ``created_at``)."""
        found = self._previous_in_store(current)
        return found[0] if found else None

    def previous_version(self, current: LoadedBundle) -> str | None:
        """The version of ``current``'s previous champion (from the store's manifests), None when
        there is none; an OSError when the store cannot be read."""
        found = self._previous_in_store(current)
        return found[1] if found else None

    def _previous_in_store(self, current: LoadedBundle) -> tuple[Path, str] | None:
        if self.store is None:
            return None
        return _previous_in_store(self.store, current.version, str(current.manifest.get("created_at") or ""))

    def previous(self, current: LoadedBundle) -> LoadedBundle | None:
        """``current``'s previous champion, loaded now if this worker has not tried yet, or if it
        failed to load and its back-off is over (:data:`RETRY_SECONDS`).

        Blocks while it loads: the online monitor's thread calls it (OnlineMonitor.prepare_fallback),
        never a request, which takes :meth:`loaded` instead."""
        if self.mode != PREVIOUS:
            return None
        version = current.version
        known = self._previous.get(version, _MISSING)
        if known is not _MISSING and not self._retry_due(version):
            return known  # type: ignore[return-value]
        with self._lock:
            known = self._previous.get(version, _MISSING)
            if known is not _MISSING and not self._retry_due(version):
                return known  # type: ignore[return-value]
            bundle = None
            path = self.previous_bundle_dir(current)
            if path is not None:
                try:
                    bundle = load_bundle(path)
                    log.info("fallback bundle loaded", extra={"fallback_version": bundle.version})
                except BundleError as exc:
                    waited = self._retry[version][1] if version in self._retry else 0.0
                    wait = min(2 * waited, RETRY_MAX_SECONDS) or RETRY_SECONDS
                    self._retry[version] = (self._clock() + wait, wait)
                    log.warning("previous bundle cannot serve as fallback; using popularity",
                                extra={"path": str(path), "reason": describe_error(exc, 300),
                                       "retry_in_seconds": wait})  # fmt: skip
            if bundle is not None or path is None:
                self._retry.pop(version, None)
            _keep(self._previous, version, bundle)
            for gone in [name for name in self._retry if name not in self._previous]:
                del self._retry[gone]
        return bundle

    def _retry_due(self, version: str) -> bool:
        """Whether ``version``'s previous champion failed to load and its back-off is over."""
        retry = self._retry.get(version)
        return retry is not None and self._clock() >= retry[0]

    def loaded(self, current: LoadedBundle) -> LoadedBundle | None:
        """``current``'s previous champion if this worker has it loaded; never loads, never waits."""
        return self._previous.get(current.version) if self.mode == PREVIOUS else None

    def wanted(self, current: LoadedBundle) -> bool:
        """Whether ``current``'s previous champion should be loaded although its breaker is closed:
        a request needed the fallback before it was (the monitor thread then loads it)."""
        version = current.version
        return (
            self.mode == PREVIOUS
            and self._wanted == version
            and (version not in self._previous or self._retry_due(version))
        )

    def describe(self, current: LoadedBundle | None) -> dict[str, Any]:
        """:meth:`_describe` with ``fallback_error`` None when it names no error."""
        return {"fallback_error": None, **self._describe(current)}

    def _describe(self, current: LoadedBundle | None) -> dict[str, Any]:
        """What the fallback serves for ``current`` (for /api/model and the dashboard), without loading it.

        ``fallback``: ``previous champion <version>`` (named from the store's manifests),
        ``popularity from <version>`` (configured so, no older bundle in the store, or it could not
        load) or ``none`` (no bundle served). ``fallback_loaded``: whether this worker holds what
        it names; a previous champion not loaded yet is served as popularity until the monitor
        thread has loaded it. ``fallback_error`` (when there is one; :meth:`describe` says None
        otherwise): why no previous champion could be named, a model store this service may not
        read (popularity serves; the monitor thread tries again each round in which it would load the
        fallback: :meth:`OnlineMonitor.prepare_fallback`). Until 2026-12-06 such
        a store raised PermissionError here, and /api/model and the dashboard were 500s."""
        if current is None:
            return {"fallback": "none", "fallback_loaded": False}
        popularity = {"fallback": f"popularity from {current.version}", "fallback_loaded": True}
        if self.mode != PREVIOUS:
            return popularity
        known = self._previous.get(current.version, _MISSING)
        if isinstance(known, LoadedBundle):
            return {"fallback": f"previous champion {known.version}", "fallback_loaded": True}
        if known is None:  # tried: none in the store, or it cannot load
            return popularity
        try:
            found = self._previous_in_store(current)
        except OSError as exc:  # what serves is popularity: the monitor cannot load it either
            reason = f"the model store {self.store} cannot be read: {describe_error(exc, 300)}"
            return {**popularity, "fallback_error": reason}
        if found is None:
            return popularity
        return {"fallback": f"previous champion {found[1]}", "fallback_loaded": False}

    def popularity(self, bundle: LoadedBundle) -> np.ndarray:
        order = self._popularity.get(bundle.version)
        if order is None:
            order = popularity_order(bundle)
            with self._popularity_lock:
                _keep(self._popularity, bundle.version, order)
        return order

    def recommend(self, current: LoadedBundle, query: RecommendQuery) -> tuple[list[Recommendation], str]:
        """Fallback items and the version of the bundle they come from; never a movie in ``exclude``."""
        max_recs, age, gender, occupation, user_id, exclude = query
        demographics = age is not None and gender is not None and occupation is not None
        if user_id is not None and not demographics and not current.knows_user(user_id):
            # the same answer the champion gives: a client error must not depend on the breaker
            raise NotFound(f"user {user_id} is not known to model {current.version}")
        previous = self.loaded(current)
        if (
            previous is None
            and self.mode == PREVIOUS
            and (current.version not in self._previous or current.version in self._retry)
        ):
            self._wanted = current.version  # not loaded yet: popularity now, the monitor loads it
        if previous is not None:
            if user_id is not None and previous.knows_user(user_id):
                return previous.recommend_user(user_id, max_recs, exclude), previous.version
            # a user the champion knows but the previous one does not: their own unrated list
            # (below), not the previous champion's segment list, which may hold what they rated
            if demographics and (user_id is None or not current.knows_user(user_id)):
                assert age is not None and gender is not None and occupation is not None
                return previous.recommend_segment(
                    Segment.of(age, gender, occupation), max_recs, exclude
                ), previous.version
        return self._popular(current, max_recs, user_id, exclude), current.version

    def _popular(
        self, bundle: LoadedBundle, max_recs: int, user_id: int | None, exclude: Container[int] = ()
    ) -> list[Recommendation]:
        order = self.popularity(bundle)
        if user_id is not None and bundle.knows_user(user_id):
            own = bundle.recommend_user(user_id, bundle.tables.user_top.shape[1])
            candidates = np.asarray([bundle.position_of_movie[item.movie_id] for item in own], dtype=np.int64)
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            positions = candidates[np.argsort(rank[candidates], kind="stable")]
        else:
            positions = order
        if exclude:
            positions = positions[[int(bundle.movie_ids[p]) not in exclude for p in positions]]
        # The score of a popularity list is its Borda rank turned into a decreasing number in (0, 1].
        return [
            Recommendation(int(bundle.movie_ids[p]), bundle.titles[p], round(1.0 / (i + 1), 6))
            for i, p in enumerate(positions[:max_recs])
        ]


def _keep(cache: OrderedDict[str, Any], version: str, value: Any) -> None:
    """Add ``version``'s entry, dropping the oldest beyond :data:`KEPT_VERSIONS` (caller holds the lock)."""
    cache[version] = value
    cache.move_to_end(version)
    while len(cache) > KEPT_VERSIONS:
        cache.popitem(last=False)
