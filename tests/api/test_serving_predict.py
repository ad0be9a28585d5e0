"""/api/predict/stream and /api/predict/batch: the bundle's LinearRatingModel, one vectorised call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving_helpers import copy_store

pytestmark = pytest.mark.api

RECORD = {"age": 30, "gender": "M", "occupation": "programmer", "movie_id": 1}


def test_stream_predicts_a_rating_with_the_bundles_rating_model(
    app: Any, client: Any, auth_headers: dict
) -> None:
    bundle = app.extensions["movierec"].models.require()
    assert bundle.rating_model is not None and bundle.rating_model.name == "linear_rating"
    response = client.post("/api/predict/stream", json=RECORD, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert 1.0 <= body["prediction"] <= 5.0
    assert body["model_version"] == bundle.version
    expected = float(bundle.rating_model.predict_records([RECORD])[0])
    assert body["prediction"] == pytest.approx(expected, abs=1e-5)


def test_known_user_id_changes_the_prediction(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    user = synthetic_data.users.iloc[0]
    base = {"age": int(user["age"]), "gender": user["gender"], "occupation": user["occupation"]}
    cold, known = [], []
    for movie_id in synthetic_data.items["movie_id"].head(15):
        record = {**base, "movie_id": int(movie_id)}
        cold.append(
            client.post("/api/predict/stream", json=record, headers=auth_headers).get_json()["prediction"]
        )
        with_user = {**record, "user_id": int(user["user_id"])}
        known.append(
            client.post("/api/predict/stream", json=with_user, headers=auth_headers).get_json()["prediction"]
        )
    assert not np.allclose(cold, known), "a known user's own ratings must move the prediction"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age", 0), ("age", 121), ("age", True), ("age", "30"), ("gender", "X"), ("occupation", "pilot"),
        ("movie_id", 0), ("movie_id", "1"), ("user_id", 0), ("user_id", False), ("extra", 1),
    ],
)  # fmt: skip
def test_stream_rejects_each_invalid_field(client: Any, auth_headers: dict, field: str, value: Any) -> None:
    response = client.post("/api/predict/stream", json={**RECORD, field: value}, headers=auth_headers)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("missing", ["age", "gender", "occupation", "movie_id"])
def test_stream_requires_each_field(client: Any, auth_headers: dict, missing: str) -> None:
    record = {k: v for k, v in RECORD.items() if k != missing}
    response = client.post("/api/predict/stream", json=record, headers=auth_headers)
    assert response.status_code == 400
    assert missing in response.get_json()["error"]["fields"]


def test_stream_movie_outside_the_catalogue_is_400(client: Any, auth_headers: dict) -> None:
    # named as the body names it, as for movie_id 0 (it was "instance.movie_id": the same field of
    # one endpoint under two names, depending on which check refused it)
    response = client.post("/api/predict/stream", json={**RECORD, "movie_id": 99_999}, headers=auth_headers)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["fields"] == {"movie_id": "must be the id of a movie in the catalogue"}
    assert error["message"] == "movie_id must be the id of a movie in the catalogue"


def test_predict_needs_a_token(client: Any) -> None:
    for path, body in (("/api/predict/stream", RECORD), ("/api/predict/batch", {"instances": [RECORD]})):
        response = client.post(path, json=body)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"


def test_batch_matches_stream_and_keeps_order(client: Any, auth_headers: dict, synthetic_data: Any) -> None:
    movies = synthetic_data.items["movie_id"].tolist()
    records = [
        {
            "age": 18 + i % 50,
            "gender": "MF"[i % 2],
            "occupation": "student",
            "movie_id": int(movies[i % len(movies)]),
        }
        for i in range(1_000)
    ]
    response = client.post("/api/predict/batch", json={"instances": records}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 1_000
    for index in (0, 1, 517, 999):
        single = client.post("/api/predict/stream", json=records[index], headers=auth_headers).get_json()
        assert predictions[index] == pytest.approx(single["prediction"], abs=1e-5)


def test_batch_of_ten_thousand_is_accepted_beyond_the_64k_body_limit(client: Any, auth_headers: dict) -> None:
    records = [{**RECORD, "age": 20 + i % 40} for i in range(10_000)]
    payload = json.dumps({"instances": records})
    assert len(payload) > 64 * 1024
    response = client.post(
        "/api/predict/batch", data=payload, content_type="application/json", headers=auth_headers
    )
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == 10_000
    # …while ordinary endpoints keep the 64 KiB limit
    big = client.post("/api/echo", data=json.dumps({"x": "y" * 70_000}), content_type="application/json",
                      headers=auth_headers)  # fmt: skip
    assert big.status_code == 413


@pytest.mark.parametrize(
    ("instances", "field"),
    [
        ([], "instances"),
        ([RECORD] * 10_001, "instances"),
        ([RECORD, {**RECORD, "age": 0}], "instances[1].age"),
        ([RECORD, RECORD, {**RECORD, "gender": "x"}], "instances[2].gender"),
        ([{**RECORD, "occupation": 5}], "instances[0].occupation"),
        ([RECORD, {**RECORD, "movie_id": 99_999}], "instances[1].movie_id"),
        ([RECORD, {**RECORD, "movie_id": 1.5}], "instances[1].movie_id"),
        ([{**RECORD, "user_id": -1}], "instances[0].user_id"),
        ([RECORD, {"age": 30, "gender": "M", "occupation": "programmer"}], "instances[1].movie_id"),
        ([RECORD, {**RECORD, "colour": "red"}], "instances[1].colour"),
        ([RECORD, [1, 2, 3]], "instances[1].record"),
    ],
)
def test_batch_names_the_bad_record_and_field(
    client: Any, auth_headers: dict, instances: list, field: str
) -> None:
    response = client.post("/api/predict/batch", json={"instances": instances}, headers=auth_headers)
    assert response.status_code == 400, response.get_json()
    assert field in response.get_json()["error"]["fields"]


# Raw JSON text: the values as a client writes them (1e20 and 99999999999999999999 are floats
# after parsing, 18446744073709551615 is the largest integer orjson keeps as an int).
@pytest.mark.parametrize(
    ("field", "text", "accepted"),
    [
        ("age", "30.0", True), ("movie_id", "1.0", True), ("user_id", "1.0", True),
        ("age", "30.5", False), ("movie_id", "1e20", False), ("age", "-1e20", False),
        ("user_id", "99999999999999999999", False), ("user_id", "18446744073709551615", False),
        ("user_id", "2147483648", False), ("movie_id", "2147483648", False),
        ("user_id", "9007199254740993.0", False),
    ],
)  # fmt: skip
def test_stream_and_batch_agree_on_every_integer_field(
    client: Any, auth_headers: dict, field: str, text: str, accepted: bool
) -> None:
    """One record is checked alike alone and in a batch; no number gives a 500."""
    record = json.dumps({**RECORD, field: "VALUE"}).replace('"VALUE"', text)
    headers = {**auth_headers, "Content-Type": "application/json"}
    stream = client.post("/api/predict/stream", data=record, headers=headers)
    batch = client.post("/api/predict/batch", data=f'{{"instances": [{record}]}}', headers=headers)
    if accepted:
        assert stream.status_code == batch.status_code == 200, (stream.get_json(), batch.get_json())
        assert batch.get_json()["predictions"][0] == pytest.approx(stream.get_json()["prediction"], abs=1e-6)
    else:
        assert (stream.status_code, batch.status_code) == (400, 400), (stream.get_json(), batch.get_json())
        assert field in stream.get_json()["error"]["fields"]
        assert f"instances[0].{field}" in batch.get_json()["error"]["fields"]
        if field == "user_id":  # 2147483648 is positive: the rule names the range, alone and in a batch
            assert "between 1 and 2147483647" in stream.get_json()["error"]["fields"][field]
            assert "between 1 and 2147483647" in batch.get_json()["error"]["fields"][f"instances[0].{field}"]


def test_batch_rejects_unknown_top_level_fields(client: Any, auth_headers: dict) -> None:
    response = client.post("/api/predict/batch", json={"instances": [RECORD], "x": 1}, headers=auth_headers)
    assert response.status_code == 400
    assert "x" in response.get_json()["error"]["fields"]


def test_bundle_without_rating_model_answers_503_but_still_recommends(
    make_app: Any, model_store: Path, tmp_path: Path, auth_headers: dict
) -> None:
    store = copy_store(model_store, tmp_path / "store")
    bundle = (store / "latest").resolve()
    (bundle / "rating_model.pkl").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("rating_model", None)
    manifest.get("files", {}).pop("rating_model.pkl", None)  # as written by a training without one
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    client = make_app(model_path=store, model_dir=store).test_client()
    response = client.post("/api/predict/stream", json=RECORD, headers=auth_headers)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    profile = {"age": 30, "gender": "M", "occupation": "programmer"}
    assert client.post("/api/recommend", json=profile, headers=auth_headers).status_code == 200


def _predict_status(client: Any, headers: dict, movie_id: int) -> tuple[int, int]:
    record = {"age": 30, "gender": "M", "occupation": "programmer", "movie_id": movie_id}
    stream = client.post("/api/predict/stream", json=record, headers=headers)
    batch = client.post("/api/predict/batch", json={"instances": [record]}, headers=headers)
    return stream.status_code, batch.status_code


def test_the_seed_forest_served_alone_answers_predictions_503_not_500(
    make_app: Any, synthetic_data: Any, tmp_path: Path, auth_headers: dict
) -> None:
    """It predicts ratings, but not from the API's records: every prediction was a 500."""
    import joblib

    from app.recommender.models.forest import SeedRandomForest

    model = SeedRandomForest(n_estimators=5).fit(
        synthetic_data.ratings, synthetic_data.users, synthetic_data.items
    )
    pickle = tmp_path / "seed" / "model.pkl"
    pickle.parent.mkdir()
    joblib.dump(model, pickle)
    client = make_app(model_path=pickle, model_dir=tmp_path / "empty-store").test_client()
    profile = {"age": 30, "gender": "M", "occupation": "programmer"}
    assert client.post("/api/recommend", json=profile, headers=auth_headers).status_code == 200
    assert _predict_status(client, auth_headers, int(model.item_ids[0])) == (503, 503)


def test_a_bundle_whose_champion_is_the_seed_forest_is_served_with_predictions(
    make_app: Any, synthetic_data: Any, tmp_path: Path, auth_headers: dict
) -> None:
    """Training named the forest's ``model.pkl`` as the rating model; the service refused the whole
    bundle ("does not hold a rating model that can serve predictions"). Now training adds the
    linear rating model, and a bundle written the old way is served without predictions."""
    from app.recommender.training import train

    store = tmp_path / "store"
    train(synthetic_data, store, ["seed_random_forest"], seeds=(0,))
    bundle = (store / "latest").resolve()
    assert json.loads((bundle / "manifest.json").read_text())["rating_model"]["file"] == "rating_model.pkl"
    client = make_app(model_path=store, model_dir=store).test_client()
    movie = int(synthetic_data.items["movie_id"].iloc[0])
    assert _predict_status(client, auth_headers, movie) == (200, 200)

    old = tmp_path / "old-store"
    train(synthetic_data, old, ["seed_random_forest"], seeds=(0,), rating_model=False)
    bundle = (old / "latest").resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["rating_model"] = {"name": "seed_random_forest", "file": "model.pkl"}  # as written before
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    app = make_app(model_path=old, model_dir=old)
    assert app.extensions["movierec"].models.bundle is not None, app.extensions["movierec"].models.last_error
    profile = {"age": 30, "gender": "M", "occupation": "programmer"}
    assert app.test_client().post("/api/recommend", json=profile, headers=auth_headers).status_code == 200
    assert _predict_status(app.test_client(), auth_headers, movie) == (503, 503)


def test_the_spec_states_that_a_batch_record_is_a_stream_record(client: Any) -> None:
    """/openapi.json (and /docs) said a batch item was any object; it is the /stream record."""
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict) -> dict:
        return schemas[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema

    operation = spec["paths"]["/api/predict/batch"]["post"]
    body = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    stream = spec["paths"]["/api/predict/stream"]["post"]
    record = resolve(stream["requestBody"]["content"]["application/json"]["schema"])
    assert resolve(body["properties"]["instances"]["items"]) == record
    assert body["properties"]["instances"]["maxItems"] == 10_000


@pytest.mark.parametrize("missing", ["age", "gender", "occupation", "movie_id"])
def test_batch_says_a_missing_field_is_required_as_stream_does(
    client: Any, auth_headers: dict, missing: str
) -> None:
    """A record without ``age`` was answered "instances[1].age must be an integer between 1 and
    120", as if a value had been sent; /stream says the field is required."""
    record = {key: value for key, value in RECORD.items() if key != missing}
    stream = client.post("/api/predict/stream", json=record, headers=auth_headers)
    batch = client.post("/api/predict/batch", json={"instances": [RECORD, record]}, headers=auth_headers)
    assert (stream.status_code, batch.status_code) == (400, 400)
    assert stream.get_json()["error"]["fields"][missing].startswith("is required")
    assert batch.get_json()["error"]["fields"][f"instances[1].{missing}"].startswith("is required")
    assert "instances[1]." + missing + " is required" in batch.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value"), [("age", 0), ("gender", "x"), ("occupation", "pilot"), ("movie_id", 99_999)]
)
def test_a_bad_field_gets_the_same_rule_alone_and_in_a_batch(
    client: Any, auth_headers: dict, field: str, value: Any
) -> None:
    """The batch kept its own copy of the field rules, and it had drifted: a bad occupation was told
    "must be one of the 21 MovieLens occupations" in a batch but given the list alone."""
    record = {**RECORD, field: value}
    stream = client.post("/api/predict/stream", json=record, headers=auth_headers).get_json()
    batch = client.post("/api/predict/batch", json={"instances": [record]}, headers=auth_headers).get_json()
    assert batch["error"]["fields"][f"instances[0].{field}"] == stream["error"]["fields"][field]


def test_stream_and_batch_round_a_prediction_alike(
    app: Any, client: Any, auth_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/stream rounded with Python's round() and /batch with NumPy's, which differ on values next to
    a half-way point: 2.3450015 was 2.345001 alone and 2.345002 in a batch."""
    model = app.extensions["movierec"].models.require().rating_model
    monkeypatch.setattr(model, "predict_records", lambda records: np.full(len(records), 2.3450015))
    stream = client.post("/api/predict/stream", json=RECORD, headers=auth_headers).get_json()
    batch = client.post("/api/predict/batch", json={"instances": [RECORD]}, headers=auth_headers).get_json()
    assert batch["predictions"] == [stream["prediction"]]


@pytest.mark.parametrize(
    ("instances", "field"),
    [
        ([{**RECORD, "movie_id": 99_999}, {**RECORD, "age": 0}], "instances[1].movie_id"),
        ([{**RECORD, "age": 0}, {**RECORD, "colour": "red"}], "instances[1].age"),
        ([{**RECORD, "movie_id": "1"}, {**RECORD, "age": "x"}], "instances[1].movie_id"),
        ([{**RECORD, "occupation": "pilot"}, {**RECORD, "gender": "x"}], "instances[1].occupation"),
        ([{**RECORD, "user_id": 0}, {**RECORD, "movie_id": 0}], "instances[1].user_id"),
        ([{**RECORD, "age": 0}, 5], "instances[1].age"),
        ([{"age": 30}, {**RECORD, "zzz": 1}], "instances[1].gender"),
        ([{**RECORD, "movie_id": 99_999}, {**RECORD, "colour": "red"}, {**RECORD, "age": "x"}, 5],
         "instances[1].movie_id"),
    ],
)  # fmt: skip
def test_batch_names_the_first_bad_record(
    client: Any, auth_headers: dict, instances: list, field: str
) -> None:
    """Each check ran over all the records before the next one, so a later record failing an earlier
    check was named instead of the first bad record (an unknown field in record 2 before a bad age
    in record 1); docs/serving.md says the first bad one is named. The record named is now the first
    one that is refused at all."""
    body = {"instances": [RECORD, *instances, RECORD]}
    response = client.post("/api/predict/batch", json=body, headers=auth_headers)
    assert response.status_code == 400, response.get_json()
    assert list(response.get_json()["error"]["fields"]) == [field]


@pytest.mark.parametrize("name", ["", " ", "a, b", "x\ny"])
def test_an_unknown_field_in_a_batch_is_named_readably_as_alone(
    client: Any, auth_headers: dict, name: str
) -> None:
    """A name that would not read as one field is quoted as JSON in the message, as /stream (and
    every other body) quotes it: a batch told "instances[1]: unknown field " for a field named "",
    and "unknown field a, b" could not be told from two fields. ``fields`` keeps the name as sent."""
    record = {**RECORD, name: 1}
    stream = client.post("/api/predict/stream", json=record, headers=auth_headers).get_json()["error"]
    batch = client.post("/api/predict/batch", json={"instances": [RECORD, record]}, headers=auth_headers)
    error = batch.get_json()["error"]
    assert batch.status_code == 400
    assert error["fields"] == {f"instances[1].{name}": "unknown field"}
    quoted = json.dumps(name, ensure_ascii=False)
    assert stream["message"].endswith(quoted)
    assert error["message"] == f"instances[1]: unknown field {quoted}"
