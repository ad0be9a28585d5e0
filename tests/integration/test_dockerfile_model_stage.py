"""The Dockerfile's model stage (the accuracy test at ``docker build``, then install-model) run
as the build runs it, without Docker: its RUN script on what its COPY instructions copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_dockerfile import REPO, STAGES

pytestmark = pytest.mark.integration


def _run_model_stage(
    tmp_path: Path, copied: Path, model_file: str, test_data: Path
) -> subprocess.CompletedProcess[str]:
    """The model stage's RUN (the accuracy test, then install-model) on what its COPY instructions
    would have copied (``copied``: a directory's contents, or a file, into /tmp/model-in/), with
    this checkout's Python, in a scratch directory instead of /tmp/model-in, /tmp/model-test and /model."""
    (run,) = [arguments for keyword, arguments in STAGES["model"][1] if keyword == "RUN"]
    model_in, model_test = tmp_path / "model-in", tmp_path / "model-test"
    if copied.is_dir():
        shutil.copytree(copied, model_in, symlinks=True)
    else:
        model_in.mkdir(parents=True)
        shutil.copy2(copied, model_in)
    model_test.mkdir()
    shutil.copy2(test_data, model_test / "test_data.json")
    script = run.replace("/tmp/model-in", str(model_in)).replace("/tmp/model-test", str(model_test))
    assert script.endswith(" /model --test-data " + f"{model_test}/test_data.json"), script
    script = script.replace(" /model --test-data ", f" {tmp_path / 'store'} --test-data ")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "MODEL_FILE": model_file, "MODEL_TEST_FILE": "",
           "ACCURACY_TOLERANCE": "1e-5"}  # fmt: skip
    return subprocess.run(
        ["sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_model_stage_builds_a_model_pkl_with_the_catalogue_beside_it(
    personal_model_store: Path, tmp_path: Path
) -> None:
    """MODEL_FILE a model.pkl (the seed's build argument): a lone model.pkl takes its titles from a
    catalogue.csv beside it, as ML_MODEL_PATH does, and the image has no data set to take them from.
    A directory holding the two went into the build as a directory without manifest.json, and the
    stage looked for /tmp/model-in/<its name>: the accuracy test found no model. A seed-style
    scikit-learn regressor passed its accuracy test (R²) and then failed install-model, which did not
    take the catalogue beside it ('the movie catalogue (data set) is needed to serve it')."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    bundle = (personal_model_store / "latest").resolve()
    ranker = tmp_path / "ranker"
    ranker.mkdir()
    for name in ("model.pkl", "catalogue.csv"):
        shutil.copy2(bundle / name, ranker / name)
    done = _run_model_stage(tmp_path / "a", ranker, "ranker", bundle / "test_data.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: ndcg@10" in done.stdout and "installed model" in done.stdout

    rng = np.random.default_rng(0)
    x = rng.random((40, 4)) * [60, 2, 20, 50]
    y = x @ [0.01, 0.2, 0.03, 0.02] + rng.normal(0, 0.1, 40)
    regressor = tmp_path / "regressor"
    regressor.mkdir()
    joblib.dump(LinearRegression().fit(x, y), regressor / "model.pkl")
    shutil.copy2(bundle / "catalogue.csv", regressor / "catalogue.csv")
    test_data = tmp_path / "r2.json"
    test_data.write_text(json.dumps({"data": x.tolist(), "target": y.tolist(), "expected_score": 0.5}))
    done = _run_model_stage(tmp_path / "b", regressor, "regressor", test_data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: r2" in done.stdout and "installed model" in done.stdout

    done = _run_model_stage(tmp_path / "c", bundle, "model/latest", bundle / "test_data.json")  # as before
    assert done.returncode == 0, done.stdout + done.stderr

    # a model.pkl given alone is copied alone: no titles, said as such
    done = _run_model_stage(
        tmp_path / "d", ranker / "model.pkl", "ranker/model.pkl", bundle / "test_data.json"
    )
    assert done.returncode != 0 and "needs a catalogue.csv beside it" in done.stderr, done.stderr
