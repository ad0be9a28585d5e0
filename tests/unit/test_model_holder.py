"""The served-model holder: a reload in a worker whose heap is frozen (app/wsgi.py) frees the old bundle."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from app.services.models import ModelHolder

pytestmark = pytest.mark.unit


def test_a_reload_in_a_frozen_process_frees_the_old_bundles_cycles_and_freezes_again(
    model_store: Path,
) -> None:
    holder = ModelHolder(model_store)
    holder.load()
    old = holder.bundle
    assert old is not None
    object.__setattr__(old, "_test_cycle", [old])  # only the cyclic collector can free it once replaced
    gone = weakref.ref(old)
    del old
    gc.collect()
    gc.freeze()  # as a uwsgi worker does after start-up
    try:
        holder.load()
        assert gone() is None, "the replaced bundle stayed in a frozen cycle"
        assert gc.get_freeze_count() > 0, "the heap was left unfrozen"
    finally:
        gc.unfreeze()


def test_without_a_frozen_heap_a_reload_leaves_collection_to_the_collector(model_store: Path) -> None:
    holder = ModelHolder(model_store)
    holder.load()
    holder.load()
    assert gc.get_freeze_count() == 0
