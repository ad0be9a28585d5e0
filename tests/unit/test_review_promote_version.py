"""promote_version: when the champion alias cannot be moved after the export, the model store
serves what it served before -- also when it served nothing (a first promotion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.registry.export import promote_version, served_version
from tests.unit.test_review_registry_export import _registered

pytestmark = pytest.mark.unit


def test_an_alias_failure_on_an_empty_model_store_leaves_it_serving_nothing(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    registry, version, copy = _registered(tmp_path, personal_model_store)
    store = copy.parent
    assert not (store / "latest").exists()

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("tracking store down")

    monkeypatch.setattr(registry, "set_alias", broken)
    with pytest.raises(RuntimeError, match="tracking store down"):
        promote_version(registry, version, store)
    assert registry.champion() is None
    assert served_version(store) is None, "latest serves a version the registry does not name champion"
    assert not (store / "latest").is_symlink()
