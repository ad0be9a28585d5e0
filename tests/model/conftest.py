"""The model-quality tier runs on the real ml-100k (fetched from the registry package, never committed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def real_data() -> Any:
    from app.recommender.data import load_movielens

    return load_movielens(Path(os.environ.get("MOVIEREC_DATA_DIR", ROOT / "data")))


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory, real_data: Any) -> Path:
    """A model store trained exactly as `movierec train` does (all default candidates, seeds 0–4)."""
    from app.recommender.training import train

    store = tmp_path_factory.mktemp("real-model-store")
    train(real_data, store)
    return store
