"""tests/run_accuracy_tests.py given a model.pkl that cannot be unpickled: the reason, no traceback."""

from __future__ import annotations

import shutil
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


@pytest.mark.parametrize(
    "data",
    [
        [{"age": 30, "gender": "M", "occupation": "writer"}] * 3,  # a bundle's profiles
        [[1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0]],  # ragged rows
        [[1.0, 2.0], [2.0, 3.0], [3.0, 4.0]],  # the wrong number of features
    ],
)
def test_test_data_that_does_not_fit_a_scikit_learn_model_is_one_error_line(
    tmp_path: Path, data: list[object]
) -> None:
    """A seed-style scikit-learn model.pkl given a bundle's test data (profiles, not feature rows)
    crashed in numpy with a TypeError traceback ('float() argument must be ... not dict')."""
    import json

    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from app.cli import cli

    rng = np.random.default_rng(0)
    model = tmp_path / "model.pkl"
    joblib.dump(LinearRegression().fit(rng.random((20, 3)), rng.random(20)), model)
    test_data = tmp_path / "test_data.json"
    test_data.write_text(json.dumps({"data": data, "target": [1.0, 2.0, 3.0], "expected_score": 0.1}))
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(test_data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"Error: test data {test_data} does not fit the LinearRegression in {model}" in result.output


def test_a_seed_style_tar_gz_of_a_scikit_learn_model_is_scored_like_its_model_pkl(tmp_path: Path) -> None:
    """The seed's interface: MODEL is a model.pkl "or a .tar.gz file with a single file named
    model.pkl". The scikit-learn fallback (its own score, R²) only took a bare model.pkl: the same
    estimator archived failed with "holds a LinearRegression, neither a movierec model nor ..."."""
    import json
    import tarfile

    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from app.cli import cli

    rng = np.random.default_rng(0)
    x, y = rng.random((30, 3)), rng.random(30)
    model = tmp_path / "model.pkl"
    joblib.dump(LinearRegression().fit(x, y), model)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model, arcname="model.pkl")
    test_data = tmp_path / "test_data.json"
    test_data.write_text(json.dumps({"data": x.tolist(), "target": y.tolist(), "expected_score": 0.0}))
    plain = CliRunner().invoke(cli, ["accuracy", str(model), str(test_data)])
    archived = CliRunner().invoke(cli, ["accuracy", str(archive), str(test_data)])
    assert plain.exit_code == 0, plain.output
    assert archived.exit_code == 0, archived.output
    plain_line, archived_line = (json.loads(r.stdout.splitlines()[0]) for r in (plain, archived))
    assert (plain_line.pop("model"), archived_line.pop("model")) == (str(model), str(archive))
    assert archived_line == plain_line


def test_an_archived_model_pkl_over_the_size_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed-style ``.tar.gz`` fallback read its model.pkl member into memory whatever its
    size: a huge member (a decompression bomb: gigabytes of zeros in a few kilobytes) exhausted
    memory. One over the limit is now one error line, and nothing of it is read."""
    import io
    import json
    import tarfile

    from app.cli import cli
    from app.recommender import accuracy

    monkeypatch.setattr(accuracy, "MAX_ARCHIVED_MODEL_BYTES", 4096, raising=False)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("model.pkl")
        member.size = 4097
        tar.addfile(member, io.BytesIO(b"\0" * member.size))
    read: list[int] = []
    real_extractfile = tarfile.TarFile.extractfile
    monkeypatch.setattr(
        tarfile.TarFile, "extractfile", lambda self, m: read.append(1) or real_extractfile(self, m)
    )
    test_data = tmp_path / "test_data.json"
    test_data.write_text(json.dumps({"data": [[1.0]], "target": [1.0], "expected_score": 0.0}))
    result = CliRunner().invoke(cli, ["accuracy", str(archive), str(test_data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "4097 bytes" in errors[0] and "4096" in errors[0], result.output
    assert not read


@pytest.mark.parametrize(
    ("rows", "target", "problem"),
    [
        # scikit-learn scores every imperfect model 0.0 against a constant target: an expected_score
        # of 0 passed any model, however bad
        (3, [2.0, 2.0, 2.0], "its target is the same in every row"),
        (1, [2.0], "1 row"),  # R² nan: 'FAILED: r2 nan < expected', read as a bad model
        (0, [], "0 rows"),  # numpy's 'Expected 2D array, got 1D array instead: ... Reshape ...'
    ],
)
def test_test_data_on_which_r2_is_undefined_is_an_error_not_a_verdict(
    tmp_path: Path, rows: int, target: list[float], problem: str
) -> None:
    _assert_r2_unmeasured(tmp_path, rows, target, problem)


def test_a_score_that_is_not_a_number_is_an_error_not_a_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An estimator whose own score is nan: 'FAILED: r2 nan < expected', a broken measurement
    reported as a model below its expected score."""
    from sklearn.linear_model import LinearRegression

    monkeypatch.setattr(LinearRegression, "score", lambda self, x, y: float("nan"))
    _assert_r2_unmeasured(tmp_path, 5, [1.0, 2.0, 3.0, 4.0, 5.0], "it scored nan")


def _assert_r2_unmeasured(tmp_path: Path, rows: int, target: list[float], problem: str) -> None:
    import json

    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from app.cli import cli

    rng = np.random.default_rng(0)
    model = tmp_path / "model.pkl"
    joblib.dump(LinearRegression().fit(rng.random((20, 3)), rng.random(20)), model)
    test_data = tmp_path / "test_data.json"
    data = rng.random((rows, 3)).tolist()
    test_data.write_text(json.dumps({"data": data, "target": target, "expected_score": 0.0}))
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(test_data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"Error: test data {test_data} cannot measure the r2 of {model}: ")
    assert problem in errors[0]
    assert "OK:" not in result.output and "FAILED" not in result.output


@pytest.mark.parametrize("size", [0, 100])
def test_an_empty_or_cut_short_model_pkl_says_so(
    personal_model_store: Path, tmp_path: Path, size: int
) -> None:
    """An empty or truncated model.pkl (a copy cut short, a full disk) ended the
    build with 'Error: model.pkl could not be unpickled: ' and nothing after it: EOFError's text
    is empty."""
    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    model = tmp_path / "model.pkl"
    model.write_bytes((bundle / "model.pkl").read_bytes()[:size])
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(bundle / "test_data.json")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {model} could not be unpickled: it is empty or cut short (EOFError)"]


def _seed_regressor_dir(model_store: Path, where: Path) -> tuple[Path, Path]:
    """A seed-style model.pkl (a scikit-learn regressor over age, gender, occupation and movie id)
    with the catalogue.csv of its movies beside it, as the Dockerfile's model stage is given it,
    and its R² test data (feature rows and their ratings)."""
    import json

    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    where.mkdir()
    bundle = (model_store / "latest").resolve()
    shutil.copy2(bundle / "catalogue.csv", where / "catalogue.csv")
    rng = np.random.default_rng(0)
    x = rng.random((40, 4)) * [60, 2, 20, 50]
    y = x @ [0.01, 0.2, 0.03, 0.02] + rng.normal(0, 0.1, 40)
    joblib.dump(LinearRegression().fit(x, y), where / "model.pkl")
    test_data = where.parent / "r2.json"
    test_data.write_text(json.dumps({"data": x.tolist(), "target": y.tolist(), "expected_score": 0.5}))
    return where / "model.pkl", test_data


@pytest.mark.parametrize("archived", [False, True])
def test_a_seed_regressor_beside_its_catalogue_is_scored_by_its_own_r2(
    model_store: Path, tmp_path: Path, archived: bool
) -> None:
    """What is scored how is decided by what the model file holds: a scikit-learn estimator (not a
    movierec model) by its own score, R², as the seed's test did, whether or not the bundle loader
    could also serve it (a seed regressor with its catalogue.csv beside it can: it ranks those
    movies). It was decided by the loader refusing the regressor; once the loader served it, the
    regressor was scored by NDCG on its R² test data and the Dockerfile's model stage failed."""
    import tarfile

    from app.recommender.accuracy import run_accuracy_test

    model, test_data = _seed_regressor_dir(model_store, tmp_path / "seed")
    if archived:
        archive = tmp_path / "model.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(model, arcname="model.pkl")
            tar.add(model.parent / "catalogue.csv", arcname="catalogue.csv")
        model = archive
    result = run_accuracy_test(model, test_data)
    assert (result.metric, result.passed, result.model) == ("r2", True, str(model))


def test_a_seed_regressor_given_a_bundles_test_data_is_not_scored_by_ndcg(
    model_store: Path, tmp_path: Path
) -> None:
    """The same regressor given a bundle's test data (profiles and liked titles): test data that
    does not fit it, one error line, as for any scikit-learn estimator; never NDCG of the lists
    it would serve measured against an expected_score of another model."""
    from app.cli import cli

    model, _ = _seed_regressor_dir(model_store, tmp_path / "seed")
    bundle_test_data = (model_store / "latest").resolve() / "test_data.json"
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(bundle_test_data)])
    assert result.exit_code == 1, result.output
    assert (
        f"Error: test data {bundle_test_data} does not fit the LinearRegression in {model}" in result.output
    )


def test_a_movierec_model_pkl_is_scored_by_ndcg_of_what_it_serves(
    personal_model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickled movierec model (a Recommender) beside its catalogue.csv is a bundle: NDCG of the
    lists it serves, on the bundle's test data, even were it to have a ``score`` of its own."""
    import joblib

    from app.recommender.accuracy import run_accuracy_test

    bundle = (personal_model_store / "latest").resolve()
    monkeypatch.setattr(type(joblib.load(bundle / "model.pkl")), "score", lambda *a: 1.0, raising=False)
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.pkl", "catalogue.csv"):
        shutil.copy2(bundle / name, lone / name)
    result = run_accuracy_test(lone / "model.pkl", bundle / "test_data.json")
    assert result.metric == "ndcg@10" and result.passed and result.model.startswith("pkl-")


@pytest.mark.parametrize("archived", [False, True])
def test_a_movierec_model_pkl_is_unpickled_once_archived_or_not(
    personal_model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archived: bool
) -> None:
    """The seed-style ``.tar.gz`` of a movierec model.pkl: its member was unpickled (from up to
    1 GiB read into memory) to see whether it is a scikit-learn estimator, then the bundle loader
    extracted the archive and unpickled the model again: two copies of the model at once. Now the
    object unpickled first is the one scored, with the verdict and version the loader gives."""
    import tarfile

    import joblib

    from app.recommender.accuracy import run_accuracy_test
    from app.recommender.bundle import load_bundle
    from tests.helpers import record_calls

    bundle = (personal_model_store / "latest").resolve()
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("model.pkl", "catalogue.csv"):
        shutil.copy2(bundle / name, lone / name)
    model = lone / "model.pkl"
    if archived:
        model = tmp_path / "model.tar.gz"
        with tarfile.open(model, "w:gz") as tar:
            tar.add(lone / "model.pkl", arcname="model.pkl")
            tar.add(lone / "catalogue.csv", arcname="catalogue.csv")
    loads = record_calls(monkeypatch, joblib, "load")
    result = run_accuracy_test(model, bundle / "test_data.json")
    assert len(loads) == 1, loads
    assert result.metric == "ndcg@10" and result.passed
    assert result.model == load_bundle(model).version  # named as the loader names it
    assert result.model.startswith("pkl-")


@pytest.mark.parametrize("name", ["test_data.json", "catalogue.csv", "manifest.json"])
def test_a_file_that_is_no_pickle_given_as_the_model_says_so(personal_model_store: Path, name: str) -> None:
    """A bundle's JSON or CSV given as the model (`movierec accuracy` with its two paths swapped, or
    ML_MODEL_PATH naming the wrong file of a bundle) said "could not be unpickled: 123": joblib's
    KeyError for the first byte ('{' is 123), which named nothing a user could act on."""
    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    model = bundle / name
    result = CliRunner().invoke(cli, ["accuracy", str(model), str(bundle / "test_data.json")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith(f"Error: {model} could not be unpickled: it is not a pickle file"), errors


def test_an_archive_the_loader_refuses_is_named_not_its_extraction(
    personal_model_store: Path, tmp_path: Path
) -> None:
    """The seed's form, a .tar.gz holding one model.pkl, without the catalogue.csv a movierec
    model.pkl needs: 'Error: /tmp/movierec-bundles-0/9dfe.../model.pkl needs a catalogue.csv beside
    it', a cache directory the user never named, where no catalogue should be put."""
    import tarfile

    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle / "model.pkl", arcname="model.pkl")
    result = CliRunner().invoke(cli, ["accuracy", str(archive), str(bundle / "test_data.json")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    needs = "needs a catalogue.csv beside it (or the data set) for movie titles"
    assert errors == [f"Error: {archive}/model.pkl {needs}"], result.output
