"""The served-model holder in a uwsgi worker, whose heap is frozen after start-up (app/wsgi.py).

Frozen objects are never looked at by the cyclic garbage collector, so a bundle replaced by a
hot reload is only freed if reference counting alone frees it: bundles must hold no reference
cycles, including the caches they fill while serving.
"""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import pytest

from app.recommender.segments import Segment
from app.services.models import ModelHolder

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("store", ["model_store", "personal_model_store"])
def test_a_replaced_bundle_is_freed_in_a_frozen_heap(store: str, request: pytest.FixtureRequest) -> None:
    holder = ModelHolder(request.getfixturevalue(store))
    holder.load()
    bundle = holder.bundle
    assert bundle is not None
    # serve from it first, so the caches it fills on first use are part of what must be freed
    assert bundle.recommend_segment(Segment.of(30, "M", "programmer"), 5)
    if bundle.rating_model is not None:
        movie = int(bundle.movie_ids[0])
        bundle.rating_model.predict_records(
            [{"age": 30, "gender": "M", "occupation": "programmer", "movie_id": movie}]
        )
    gone = weakref.ref(bundle)
    del bundle
    gc.collect()
    gc.freeze()  # as a uwsgi worker does after start-up
    try:
        holder.load()
        assert gone() is None, "the replaced bundle is held by a reference cycle: a frozen worker leaks it"
    finally:
        gc.unfreeze()


def test_a_bare_model_pkl_beside_broken_local_data_is_a_refused_bundle(
    model_store: Path, tmp_path: Path
) -> None:
    """A bare model.pkl takes its titles from the local data set; local data that is there but
    unusable (a directory named u.data) raised DataUnavailableError out of ModelHolder.load, past
    the refusal every caller handles: a traceback at start, a 500 from a reload."""
    from app.recommender.bundle import BundleError

    pickle_path = tmp_path / "model.pkl"
    shutil.copy((model_store / "latest" / "model.pkl").resolve(), pickle_path)
    data_dir = tmp_path / "data"
    for name in ("u.data", "u.item", "u.user"):
        (data_dir / "ml-100k" / name).mkdir(parents=True)
    holder = ModelHolder(pickle_path, data_dir=data_dir)
    with pytest.raises(BundleError, match=r"u\.data"):
        holder.load()
    assert holder.bundle is None and holder.last_error is not None and "u.data" in holder.last_error
