"""tests/run_accuracy_tests.py on odd input: a clear error and exit 1, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.unit


def _accuracy(*args: Path) -> object:
    from app.cli import cli

    return CliRunner().invoke(cli, ["accuracy", *map(str, args)])


def _printed_lines(result: Any) -> list[str]:
    """The command's own non-empty lines: without the JSON log records (stderr) that another
    test's background thread (a reload poller loading a model) may write while this one runs."""
    return [line for line in result.output.splitlines() if line and not line.startswith('{"ts":')]


@pytest.mark.parametrize("k", [0, None, "ten"])
def test_test_data_that_is_a_directory_or_has_a_bad_k_is_an_error_not_a_traceback(
    personal_model_store: Path, tmp_path: Path, k: object
) -> None:
    bundle = (personal_model_store / "latest").resolve()
    result = _accuracy(bundle, bundle)  # the bundle directory given where its test_data.json belongs
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error:" in result.output and str(bundle) in result.output

    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(json.loads((bundle / "test_data.json").read_text()) | {"k": k}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error:" in result.output


@pytest.mark.parametrize("tolerance", ["nan", "inf", "-0.1", "much"])
def test_a_tolerance_that_is_not_a_finite_non_negative_number_is_a_usage_error(
    personal_model_store: Path, tolerance: str
) -> None:
    """nan failed every model and inf passed every one: the gate a build runs decided nothing."""
    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    args = ["accuracy", str(bundle), str(bundle / "test_data.json"), "--error-tolerance", tolerance]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "--error-tolerance" in result.output

    result = CliRunner().invoke(cli, [*args[:-1], "0.5"])  # a sane value still runs the test
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("content", [b"{", b'{"data": [1, ', b"\xff\xfe not text"])
def test_test_data_that_is_not_json_names_the_file(
    personal_model_store: Path, tmp_path: Path, content: bytes
) -> None:
    """A truncated or binary test-data file failed the image build with only the parser's words
    ('Error: Expecting property name ...: line 2 column 1'), not which file it was."""
    bundle = (personal_model_store / "latest").resolve()
    bad = tmp_path / "test_data.json"
    bad.write_bytes(content)
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"Error: test data {bad} is not JSON" in result.output


def _own_test_data(bundle: Path) -> dict[str, object]:
    return dict(json.loads((bundle / "test_data.json").read_text()))


@pytest.mark.parametrize(
    "change",
    [
        {"expected_score": float("-inf")},  # every model passed: score >= -inf
        {"expected_score": float("nan")},  # "FAILED: ... < expected nan": a broken file read as a bad model
        {"expected_score": "Infinity"},
        {"expected_score": True},
        {"floor_score": float("nan")},  # the floor silently switched off
        {"floor_score": float("-inf")},
    ],
)
def test_an_expected_or_floor_score_that_is_not_a_finite_number_is_an_error(
    personal_model_store: Path, tmp_path: Path, change: dict[str, object]
) -> None:
    """Python's json reads NaN, Infinity and -Infinity: an expected_score of -Infinity passed every
    model (the docker build's gate decided nothing), and a NaN floor_score turned the floor off."""
    bundle = (personal_model_store / "latest").resolve()
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(_own_test_data(bundle) | change))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    (key,) = change
    assert f"Error: {bad}: {key} must be a finite number" in result.output
    assert "OK:" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("Star Wars (1977)", "not a list of titles"),  # its characters were the "liked titles"
        ([], "empty"),  # an NDCG of 0 averaged in: the score dragged down, silently
        ([1, 50], "not a list of titles"),  # movie ids where titles belong: never a hit
    ],
)
def test_a_target_that_is_not_a_non_empty_list_of_titles_is_an_error(
    personal_model_store: Path, tmp_path: Path, target: object, problem: str
) -> None:
    """Each profile's target was turned into a set as it came: a string became its characters and
    an empty list scored 0, so the test ran and its score meant nothing (with an expected_score
    of 0, the build passed)."""
    bundle = (personal_model_store / "latest").resolve()
    payload = _own_test_data(bundle)
    targets = list(payload["target"])  # type: ignore[call-overload]
    targets[1] = target
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(payload | {"target": targets, "expected_score": 0.0}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: test data" in result.output and f"target 2 is {problem}" in result.output
    assert "OK:" not in result.output


@pytest.mark.parametrize("age", ["thirty", 300])
def test_a_profile_with_an_impossible_age_is_reported_as_bad_test_data(
    personal_model_store: Path, tmp_path: Path, age: object
) -> None:
    """int('thirty') and age_bucket(300) raised a ValueError that escaped bundle_score's wrapping:
    the build failed with 'Error: invalid literal for int() with base 10' and no word of which
    file or profile."""
    bundle = (personal_model_store / "latest").resolve()
    payload = _own_test_data(bundle)
    profiles = list(payload["data"])  # type: ignore[call-overload]
    profiles[0] = {**profiles[0], "age": age}
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(payload | {"data": profiles}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: test data holds a profile that is not a known segment" in result.output


def test_the_metric_is_named_by_the_test_data_s_k(personal_model_store: Path, tmp_path: Path) -> None:
    """A test data file with k 5 was scored as NDCG@5 and reported as 'ndcg@10'."""
    bundle = (personal_model_store / "latest").resolve()
    five = tmp_path / "test_data.json"
    five.write_text(json.dumps(_own_test_data(bundle) | {"k": 5, "expected_score": 0.0, "floor_score": None}))
    result = _accuracy(bundle, five)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["metric"] == "ndcg@5"
    assert "OK: ndcg@5 " in result.output


@pytest.mark.parametrize("k", [2.5, True, float("inf")])
def test_a_k_that_is_not_a_whole_number_is_an_error(
    personal_model_store: Path, tmp_path: Path, k: object
) -> None:
    """int() made 2.5 a 2 and true a 1: the test scored another metric than the file asked for;
    a k of Infinity (which Python's json reads) was int()'s OverflowError traceback."""
    bundle = (personal_model_store / "latest").resolve()
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(_own_test_data(bundle) | {"k": k}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"Error: {bad}: k must be a positive integer, not {json.dumps(k)}" in result.output


def test_a_k_deeper_than_the_bundle_s_tables_is_an_error(personal_model_store: Path, tmp_path: Path) -> None:
    """A k above the bundle's table depth (manifest table_depth) was scored against lists of at
    most that many movies: 'NDCG@500' that was NDCG of 100 movies normalised as if 500 could be."""
    bundle = (personal_model_store / "latest").resolve()
    depth = json.loads((bundle / "manifest.json").read_text())["table_depth"]
    payload = _own_test_data(bundle) | {"expected_score": 0.0, "floor_score": None}
    deep = tmp_path / "test_data.json"
    deep.write_text(json.dumps(payload | {"k": depth + 1}))
    result = _accuracy(bundle, deep)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    (line,) = _printed_lines(result)
    assert line.startswith(f"Error: {deep}: k {depth + 1} ") and f"table depth {depth}" in line
    assert "OK:" not in result.output

    deep.write_text(json.dumps(payload | {"k": depth}))  # the whole table is a k it can score
    result = _accuracy(bundle, deep)
    assert result.exit_code == 0, result.output
    assert f"OK: ndcg@{depth} " in result.output


def test_a_floor_computed_at_another_k_is_an_error(personal_model_store: Path, tmp_path: Path) -> None:
    """floor_score is NDCG at the k training computed it at (floor_k; 10 in test data written
    before floor_k): test data naming another k compared NDCG@5 with an NDCG@10 floor."""
    bundle = (personal_model_store / "latest").resolve()
    own = _own_test_data(bundle)
    assert own["floor_k"] == own["k"] == 10  # training writes the floor's k with it

    bad = tmp_path / "test_data.json"
    for floor_k in ({"floor_k": 10}, {}):  # the floor's k written, or that of older test data
        payload = {key: value for key, value in own.items() if key != "floor_k"} | floor_k
        bad.write_text(json.dumps(payload | {"k": 5, "expected_score": 0.0}))
        result = _accuracy(bundle, bad)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
        (line,) = _printed_lines(result)
        assert line.startswith(f"Error: {bad}: floor_score is ndcg@10 but k is 5"), line

    bad.write_text(json.dumps(own | {"k": 5, "floor_k": 5, "floor_score": 0.0, "expected_score": 0.0}))
    result = _accuracy(bundle, bad)  # a floor computed at the data's k compares
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["floor_score"] == 0.0


@pytest.mark.parametrize("floor_k", [0, 2.5, True, "ten"])
def test_a_floor_k_that_is_not_a_positive_integer_is_an_error(
    personal_model_store: Path, tmp_path: Path, floor_k: object
) -> None:
    bundle = (personal_model_store / "latest").resolve()
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(_own_test_data(bundle) | {"floor_k": floor_k}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"Error: {bad}: floor_k " in result.output


def test_the_output_names_the_model_version_it_tested(personal_model_store: Path, tmp_path: Path) -> None:
    """MODEL a store holding several versions is tested on the one its latest names, but neither
    the JSON line nor the verdict said which: a build or CI log that passed named no version."""
    import shutil

    bundle = (personal_model_store / "latest").resolve()
    tested = json.loads((bundle / "manifest.json").read_text())["version"]
    store = tmp_path / "store"
    shutil.copytree(bundle, store / tested)
    newer = store / "newer"
    shutil.copytree(bundle, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps(manifest | {"version": "newer"}))
    (store / "latest").symlink_to(tested)
    result = _accuracy(store, store / tested / "test_data.json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["model"] == tested
    (verdict,) = [line for line in _printed_lines(result) if line.startswith("OK: ")]
    assert verdict.endswith(f"(model {tested})")


def test_test_data_of_another_catalogue_is_an_error_not_a_score(
    personal_model_store: Path, tmp_path: Path
) -> None:
    """Test data whose liked titles are none of the model's movies (another data set's, or titles
    written another way) scored 0: read as a model that ranks nothing well ('FAILED: ndcg@10
    0.000000 < expected'), and with an expected_score of 0 (and no floor) the build passed."""
    bundle = (personal_model_store / "latest").resolve()
    payload = _own_test_data(bundle)
    targets = [[f"Another catalogue's movie {i}"] for i, _ in enumerate(payload["target"])]  # type: ignore[arg-type]
    bad = tmp_path / "test_data.json"
    bad.write_text(json.dumps(payload | {"target": targets, "expected_score": 0.0, "floor_score": None}))
    result = _accuracy(bundle, bad)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    (line,) = _printed_lines(result)
    assert line.startswith(f"Error: test data {bad} names none of the model's movies"), line
    assert "Another catalogue's movie 0" in line and "OK:" not in result.output


def test_a_verdict_on_test_data_naming_movies_the_model_lacks_says_so(
    personal_model_store: Path, tmp_path: Path
) -> None:
    """Test data naming some movies the model's catalogue lacks (the current model's test data,
    as docs/docker.md advises, against a model whose catalogue lost movies; titles spelled
    another way) scored lower, and the verdict read as a worse model: 'FAILED: ndcg@10 ... <
    expected ...', no word that those liked titles can never be recommended."""
    bundle = (personal_model_store / "latest").resolve()
    payload = _own_test_data(bundle)
    targets = [[f"{titles[0]} (director's cut)", *titles[1:]] for titles in payload["target"]]  # type: ignore[attr-defined]
    renamed = tmp_path / "test_data.json"
    renamed.write_text(json.dumps(payload | {"target": targets}))
    result = _accuracy(bundle, renamed)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (verdict,) = [line for line in _printed_lines(result) if line.startswith("FAILED: ")]
    unknown = len({titles[0] for titles in targets})  # distinct titles: profiles share liked movies
    assert f"{unknown} of the test data's " in verdict and "not in the model's catalogue" in verdict, verdict
    assert "(director's cut)" in verdict
    assert json.loads(result.stdout.splitlines()[0])["unknown_titles"] == unknown
