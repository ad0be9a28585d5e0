"""The Dockerfile's model stage (the accuracy test at ``docker build``, then install-model) run
as the build runs it, without Docker: its COPY instructions on a build context, then its RUN
script on what they copied."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_dockerfile import REPO, STAGES

pytestmark = pytest.mark.integration


def _expand(word: str, args: dict[str, str]) -> str:
    """A Dockerfile word with its ``$NAME``, ``${NAME}`` and ``${NAME:-default}`` (nested) expanded."""
    out, i = "", 0
    while i < len(word):
        if word.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(word[j], 0)
                j += 1
            name, _, default = word[i + 2 : j - 1].partition(":-")
            out += args.get(name) or _expand(default, args)
            i = j
        elif word[i] == "$":
            j = i + 1
            while j < len(word) and (word[j].isalnum() or word[j] == "_"):
                j += 1
            out += args.get(word[i + 1 : j], "")
            i = j
        else:
            out += word[i]
            i += 1
    return out


def _run_model_stage(
    tmp_path: Path, context: Path, model_file: str, model_test_file: str = ""
) -> subprocess.CompletedProcess[str]:
    """``docker build --build-arg MODEL_FILE=... --build-arg MODEL_TEST_FILE=...``'s model stage:
    its COPY instructions from the build context (``context``, the checkout's files beside it),
    a directory's contents and a link followed as Docker copies them, into a scratch directory
    instead of /tmp; then its RUN (the accuracy test, then install-model) with this checkout's
    Python, installing into a scratch store instead of /model. A COPY whose source the context
    lacks fails the test, as it fails the build."""
    instructions = STAGES["model"][1]
    args = {"ACCURACY_TOLERANCE": "1e-5"}
    for keyword, arguments in instructions:
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    args |= {"MODEL_FILE": model_file, "MODEL_TEST_FILE": model_test_file}
    scratch = tmp_path / "root"
    for keyword, arguments in instructions:
        if keyword != "COPY":
            continue
        *sources, destination = shlex.split(arguments)
        for source in sources:
            rel = _expand(source, args)
            path = context / rel if (context / rel).exists() else REPO / rel
            assert path.exists(), f"COPY {source}: {rel} is not in the build context (the build fails here)"
            target = scratch / destination.lstrip("/")
            if path.is_dir():
                shutil.copytree(path, target, symlinks=True, dirs_exist_ok=True)
            else:
                target = target / path.name if destination.endswith("/") else target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    (run,) = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    script = run.replace("/tmp/", f"{scratch}/tmp/")
    assert script.endswith(' /model --test-data "$test_data"'), script
    script = script.replace(" /model --test-data ", f" {tmp_path / 'store'} --test-data ")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), **args}  # fmt: skip
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
    context = tmp_path / "context"
    (context / "ranker").mkdir(parents=True)
    for name in ("model.pkl", "catalogue.csv"):
        shutil.copy2(bundle / name, context / "ranker" / name)
    shutil.copy2(bundle / "test_data.json", context / "test_data.json")
    done = _run_model_stage(tmp_path / "a", context, "ranker", "test_data.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: ndcg@10" in done.stdout and "installed model" in done.stdout

    rng = np.random.default_rng(0)
    x = rng.random((40, 4)) * [60, 2, 20, 50]
    y = x @ [0.01, 0.2, 0.03, 0.02] + rng.normal(0, 0.1, 40)
    regressor = context / "regressor"
    regressor.mkdir()
    joblib.dump(LinearRegression().fit(x, y), regressor / "model.pkl")
    shutil.copy2(bundle / "catalogue.csv", regressor / "catalogue.csv")
    test_data = context / "r2.json"
    test_data.write_text(json.dumps({"data": x.tolist(), "target": y.tolist(), "expected_score": 0.5}))
    done = _run_model_stage(tmp_path / "b", context, "regressor", "r2.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: r2" in done.stdout and "installed model" in done.stdout

    # a model.pkl given alone is copied alone: no titles, said as such
    done = _run_model_stage(tmp_path / "d", context, "ranker/model.pkl", "test_data.json")
    assert done.returncode != 0 and "needs a catalogue.csv beside it" in done.stderr, done.stderr


def test_the_model_stage_builds_a_bundle_or_a_model_store_with_its_own_test_data(
    personal_model_store: Path, tmp_path: Path
) -> None:
    """MODEL_FILE a model store, as `make model` writes it (``--build-arg MODEL_FILE=model``): the
    image is built from its latest bundle, tested on that bundle's test_data.json when no
    MODEL_TEST_FILE is given, as a bundle directory is. The default test data was
    ${MODEL_FILE}/test_data.json, which a store has not: the build failed in that COPY with Docker's
    '"/model/test_data.json": not found', and given MODEL_TEST_FILE, the accuracy test found no model
    at /tmp/model-in/model. Only deploy-docker.py could build from a store (it staged its latest)."""
    context = tmp_path / "context"
    shutil.copytree(personal_model_store, context / "model", symlinks=True)
    version = (personal_model_store / "latest").resolve().name
    for name, model_file in (("store", "model"), ("bundle", "model/latest")):
        done = _run_model_stage(tmp_path / name, context, model_file)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK: ndcg@10" in done.stdout and f"(model {version})" in done.stdout, done.stdout
        assert (tmp_path / name / "store" / "latest").resolve().name == version
    shutil.copy2(context / "model" / "latest" / "test_data.json", context / "champion.json")
    done = _run_model_stage(tmp_path / "given", context, "model", "champion.json")
    assert done.returncode == 0 and f"(model {version})" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("model_file", "error"),
    [
        ("model.tar.gz", "MODEL_FILE=model.tar.gz holds no test_data.json of its own: give its"),
        ("empty", "MODEL_FILE=empty is none of a bundle directory (manifest.json), a model store"),
    ],
)
def test_the_model_stage_says_in_one_line_what_it_cannot_build(
    personal_model_store: Path, tmp_path: Path, model_file: str, error: str
) -> None:
    """A .tar.gz has no test data beside it for the stage to read (it failed in the test data's COPY,
    '"/model.tar.gz/test_data.json": not found'), and a directory that is no model the accuracy test
    looked for as /tmp/model-in/<its name> ('Path ... does not exist'). Each is one Error: line after
    the line deploy-docker.py finds the verdict after."""
    import tarfile

    from app.deploy import GATE_STARTED, build_verdict

    context = tmp_path / "context"
    (context / "empty").mkdir(parents=True)
    (context / "empty" / "notes.txt").write_text("no model here\n")
    with tarfile.open(context / "model.tar.gz", "w:gz") as archive:
        archive.add((personal_model_store / "latest").resolve(), arcname="bundle")
    done = _run_model_stage(tmp_path / "run", context, model_file)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {error}"), done.stderr
    assert GATE_STARTED in done.stdout
    verdict = build_verdict(done.stdout + done.stderr)
    assert verdict == f"the model or its test data does not load: {errors[0].removeprefix('Error: ')}"
