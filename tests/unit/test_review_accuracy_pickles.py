"""tests/run_accuracy_tests.py given a model.pkl that cannot be unpickled: the reason, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.unit


def test_an_unreadable_model_pkl_is_reported_as_such(personal_model_store: Path, tmp_path: Path) -> None:
    """The bundle loader refuses it (BundleError); the fallback to a plain scikit-learn estimator
    unpickled it again, and that second failure (a KeyError, an UnpicklingError) was a traceback
    hiding the reason."""
    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    model = tmp_path / "model.pkl"
    model.write_text("not a pickle\n")
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(bundle / "test_data.json")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "could not be unpickled" in result.output
