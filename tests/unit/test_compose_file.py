"""docker-compose.yml: the scheduler can make every api worker load the champion it promotes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text())


def test_the_api_can_write_its_reload_marker_into_the_model_store() -> None:
    mounts = [m for m in COMPOSE["services"]["api"]["volumes"] if m.startswith("models:")]
    assert mounts == ["models:/var/lib/movierec/models"]  # not :ro (app/services/reload.py's marker)


@pytest.mark.parametrize("service", ["api", "scheduler"])
def test_the_admin_password_the_reload_needs_is_required(service: str) -> None:
    value = COMPOSE["services"][service]["environment"]["MOVIEREC_ADMIN_PASSWORD"]
    assert value is not None and value.startswith("${MOVIEREC_ADMIN_PASSWORD:?")
