"""User / movie feature tables and the pair encoder, on a tiny MovieLens-format data set.

Every expected number below is worked out by hand from the six ratings in ``tiny``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app.recommender.features import (
    GENRE_SLUGS,
    FeatureError,
    PairEncoder,
    age_buckets,
    genre_flags,
    item_features,
    user_features,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def tiny() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(
        {
            "movie_id": [1, 2, 3],
            "title": ["Toy Story (1995)", "GoldenEye (1995)", "Unrated (unknown)"],
            "year": pd.array([1995, 1995, None], dtype="Int64"),
            "genres": ["Animation|Children's|Comedy", "Action|Thriller", "Drama"],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "age": [24, 40, 60],
            "gender": ["M", "F", "F"],
            "occupation": ["student", "engineer", "retired"],
            "zip_code": ["00001", "00002", "00003"],
        }
    )
    ratings = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2],
            "movie_id": [1, 2, 1, 2],
            "rating": [5.0, 3.0, 4.0, 2.0],
            "timestamp": [100, 200, 150, 300],
        }
    )
    return ratings, users, items


def test_genre_slugs_are_column_safe() -> None:
    assert GENRE_SLUGS[GENRE_SLUGS.index("childrens")] == "childrens"
    assert {"film_noir", "sci_fi", "unknown"} <= set(GENRE_SLUGS)
    assert all(slug.isidentifier() for slug in GENRE_SLUGS)


def test_genre_flags_follow_the_genre_order(tiny) -> None:
    _, _, items = tiny
    flags = genre_flags(items)
    assert flags.shape == (3, 19)
    on = [sorted(GENRE_SLUGS[j] for j in np.flatnonzero(row)) for row in flags]
    assert on == [["animation", "childrens", "comedy"], ["action", "thriller"], ["drama"]]


def test_genre_flags_reject_an_unknown_genre() -> None:
    with pytest.raises(ValueError, match="Telenovela"):
        genre_flags(pd.DataFrame({"genres": ["Drama|Telenovela"]}))


@pytest.mark.parametrize(
    ("age", "bucket"),
    [(1, 0), (17, 0), (18, 1), (24, 1), (25, 2), (44, 3), (45, 4), (50, 5), (56, 6), (120, 6)],
)
def test_age_buckets_match_the_segment_boundaries(age: int, bucket: int) -> None:
    assert age_buckets([age]).tolist() == [bucket]


def test_age_buckets_name_the_bad_rows() -> None:
    with pytest.raises(FeatureError) as caught:
        age_buckets([30, 0, 121, 40])
    assert caught.value.field == "age"
    assert caught.value.rows == [1, 2]


def test_user_features_by_hand(tiny) -> None:
    ratings, users, items = tiny
    table = user_features(ratings, users, items).set_index("user_id")
    assert list(table.index) == [1, 2, 3]
    one, two, three = table.loc[1], table.loc[2], table.loc[3]
    assert (one["age_bucket"], one["age_group"]) == (1, "18-24")
    assert (one["gender"], one["occupation"]) == ("M", "student")
    assert (two["age_bucket"], three["age_group"]) == (3, "56+")
    assert (one["n_ratings"], one["n_liked"]) == (2, 1)
    assert one["mean_rating"] == pytest.approx(4.0)
    assert one["std_rating"] == pytest.approx(1.0)  # population std of {5, 3}
    assert (one["first_ts"], one["last_ts"]) == (100, 200)
    assert one["liked_share"] == pytest.approx(0.5)
    # user 1 rated Toy Story (animation, children's, comedy) and GoldenEye (action, thriller)
    assert one["share_animation"] == pytest.approx(0.5)
    assert one["share_action"] == pytest.approx(0.5)
    assert one["share_drama"] == 0.0
    # ... and liked only Toy Story
    assert one["liked_share_animation"] == pytest.approx(1.0)
    assert one["liked_share_action"] == 0.0
    assert two["mean_rating"] == pytest.approx(3.0)
    assert (two["first_ts"], two["last_ts"]) == (150, 300)
    # a user without ratings: zero counts and shares, no mean, no timestamps
    assert (three["n_ratings"], three["n_liked"], three["liked_share"]) == (0, 0, 0.0)
    assert math.isnan(three["mean_rating"]) and math.isnan(three["std_rating"])
    assert pd.isna(three["first_ts"]) and pd.isna(three["last_ts"])
    assert three[[f"share_{g}" for g in GENRE_SLUGS]].sum() == 0.0


def test_user_features_ignore_unknown_users_and_count_unknown_movies_for_activity(tiny) -> None:
    ratings, users, items = tiny
    extra = pd.DataFrame(
        {"user_id": [99, 1], "movie_id": [1, 77], "rating": [1.0, 4.0], "timestamp": [5, 400]}
    )
    table = user_features(pd.concat([ratings, extra]), users, items).set_index("user_id")
    assert 99 not in table.index
    assert table.loc[1, "n_ratings"] == 3
    assert table.loc[1, "last_ts"] == 400
    assert table.loc[1, "share_animation"] == pytest.approx(1 / 3)


def test_item_features_by_hand(tiny) -> None:
    ratings, _, items = tiny
    table = item_features(ratings, items, prior_weight=10.0).set_index("movie_id")
    # global mean 3.5; Toy Story (5, 4), GoldenEye (3, 2), movie 3 unrated
    assert table.loc[1, "n_ratings"] == 2 and table.loc[1, "n_liked"] == 2
    assert table.loc[1, "mean_rating"] == pytest.approx(4.5)
    assert table.loc[1, "smoothed_mean"] == pytest.approx((9 + 35) / 12)
    assert table.loc[2, "n_liked"] == 0
    assert table.loc[2, "smoothed_mean"] == pytest.approx((5 + 35) / 12)
    assert math.isnan(table.loc[3, "mean_rating"])
    assert table.loc[3, "smoothed_mean"] == pytest.approx(3.5)
    assert table["n_genres"].tolist() == [3, 2, 1]
    assert table.loc[1, "year"] == 1995 and pd.isna(table.loc[3, "year"])
    assert table.loc[1, "genre_childrens"] == 1 and table.loc[1, "genre_drama"] == 0
    assert table.loc[3, "genre_drama"] == 1


def _raw(encoder: PairEncoder, matrix: np.ndarray, name: str) -> np.ndarray:
    """Undo the standardisation of one numeric column."""
    names = encoder.feature_names
    column = names.index(name)
    offset = column - names.index("age")
    return matrix[:, column] * encoder.numeric_scale_[offset] + encoder.numeric_mean_[offset]


def _request(**overrides: object) -> pd.DataFrame:
    row = {"age": 40, "gender": "F", "occupation": "engineer", "movie_id": 1}
    row.update(overrides)
    return pd.DataFrame([row])


def test_encoder_shape_names_and_one_hots(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    matrix = encoder.transform(_request())
    names = encoder.feature_names
    assert matrix.dtype == np.float32
    assert matrix.shape == (1, len(names)) == (1, encoder.n_features_)
    row = dict(zip(names, matrix[0], strict=True))
    assert row["gender=F"] == 1 and row["gender=M"] == 0 and row["gender=O"] == 0
    assert row["occupation=engineer"] == 1 and row["occupation=student"] == 0
    assert row["age_bucket=3"] == 1 and row["age_bucket=1"] == 0
    assert row["genre=animation"] == 1 and row["genre=action"] == 0
    assert row["gender=F*genre=comedy"] == 1 and row["gender=M*genre=comedy"] == 0
    assert row["age_bucket=3*genre=childrens"] == 1
    assert row["user_known"] == 0


def test_an_unseen_category_is_encoded_as_the_training_mix(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    row = dict(zip(encoder.feature_names, encoder.transform(_request(gender="O"))[0], strict=True))
    # the training users who rated anything are one M and one F
    assert row["gender=M"] == pytest.approx(0.5) and row["gender=F"] == pytest.approx(0.5)
    assert row["gender=O"] == 0


def test_movie_statistics_at_serving_time_and_leave_one_out_in_training(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder(prior_weight=10.0)
    train, y = encoder.fit_transform(ratings, users, items)
    assert y.tolist() == [5.0, 3.0, 4.0, 2.0]
    served = encoder.transform(pd.concat([_request(), _request(movie_id=2)], ignore_index=True))
    assert _raw(encoder, served, "movie_smoothed_mean") == pytest.approx([44 / 12, 40 / 12], abs=1e-5)
    assert _raw(encoder, served, "movie_log_n") == pytest.approx([math.log(3), math.log(3)], abs=1e-5)
    # training row (user 1, Toy Story, 5): Toy Story's other rating is a 4 -> (4 + 35) / 11
    assert _raw(encoder, train, "movie_smoothed_mean")[0] == pytest.approx(39 / 11, abs=1e-5)
    assert _raw(encoder, train, "movie_log_n")[0] == pytest.approx(math.log(2), abs=1e-5)


def test_group_offsets_by_hand(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder(prior_weight=10.0, group_prior_weight=25.0).fit(ratings, users, items)
    served = encoder.transform(_request())
    # women who rated Toy Story: user 2 with a 4; Toy Story's smoothed mean is 44/12
    assert _raw(encoder, served, "movie_gender_offset")[0] == pytest.approx((4 - 44 / 12) / 26, abs=1e-5)
    # nobody rated movie 3: no evidence, no offset
    unrated = encoder.transform(_request(movie_id=3))
    assert _raw(encoder, unrated, "movie_age_bucket_offset")[0] == pytest.approx(0.0, abs=1e-5)
    # nobody retired rated anything either, and an unseen occupation is the training mix
    # (half student, half engineer): residuals 5 - 44/12 and 4 - 44/12 at weight 1/2, one rating
    retired = encoder.transform(_request(occupation="retired"))
    mixed = (0.5 * (5 - 44 / 12) + 0.5 * (4 - 44 / 12)) / (1 + 25)
    assert _raw(encoder, retired, "movie_occupation_offset")[0] == pytest.approx(mixed, abs=1e-5)


def test_known_user_statistics_by_hand(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder(prior_weight=10.0, user_prior_weight=5.0).fit(ratings, users, items)
    rows = pd.DataFrame({"age": [24, 24], "gender": ["M", "M"], "occupation": ["student"] * 2,
                         "movie_id": [1, 2], "user_id": [1, 1]})  # fmt: skip
    matrix = encoder.transform(rows)
    names = encoder.feature_names
    assert matrix[:, names.index("user_known")].tolist() == [1.0, 1.0]
    # residuals of user 1: 5 - 44/12 and 3 - 40/12, summing to 1.0, shrunk by 2 + 5
    assert _raw(encoder, matrix, "user_offset") == pytest.approx([1 / 7, 1 / 7], abs=1e-5)
    assert _raw(encoder, matrix, "user_std") == pytest.approx([1.0, 1.0], abs=1e-5)
    # user 1 liked only Toy Story, so its genres match fully and GoldenEye's not at all
    assert _raw(encoder, matrix, "genre_match") == pytest.approx([1.0, 0.0], abs=1e-5)


def test_cold_people_get_their_groups_genre_profile(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    rows = pd.DataFrame(
        {"age": [40, 40], "gender": ["F", "F"], "occupation": ["doctor"] * 2, "movie_id": [1, 2]}
    )
    # the (F, 35-44) group is user 2, who liked only Toy Story
    assert _raw(encoder, encoder.transform(rows), "genre_match") == pytest.approx([1.0, 0.0], abs=1e-5)


def test_unknown_or_missing_user_ids_are_cold(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    cold = encoder.transform(_request())
    for user_id in (999, None):
        frame = _request(user_id=user_id)
        np.testing.assert_array_equal(encoder.transform(frame), cold)
    known = encoder.transform(_request(user_id=2))
    assert not np.array_equal(known, cold)


def test_cold_users_in_training_are_encoded_as_unknown(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder()
    train, _ = encoder.fit_transform(ratings, users, items, cold_users=[2])
    known = train[:, encoder.feature_names.index("user_known")]
    assert known.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_one_call_equals_row_by_row(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    rows = pd.DataFrame(
        {
            "age": [24, 40, 60, 13, 33],
            "gender": ["M", "F", "F", "O", "M"],
            "occupation": ["student", "engineer", "retired", "none", "doctor"],
            "movie_id": [1, 2, 3, 1, 3],
            "user_id": pd.array([1, None, 3, 42, 2], dtype="Int64"),
        }
    )
    together = encoder.transform(rows)
    one_by_one = np.vstack([encoder.transform(rows.iloc[[i]]) for i in range(len(rows))])
    np.testing.assert_array_equal(together, one_by_one)
    # a mapping of plain columns is accepted too
    columns = {name: rows[name].tolist() for name in ("age", "gender", "occupation", "movie_id")}
    np.testing.assert_array_equal(encoder.transform(columns), encoder.transform(rows.drop(columns="user_id")))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gender": "X"}, "gender"),
        ({"occupation": "astronaut"}, "occupation"),
        ({"age": 0}, "age"),
        ({"age": None}, "age"),
        ({"movie_id": 4}, "movie_id"),
        ({"movie_id": 1.5}, "movie_id"),
    ],
)
def test_bad_requests_name_the_field_and_row(tiny, overrides: dict[str, object], field: str) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    frame = pd.concat([_request(), _request(**overrides)], ignore_index=True)
    folded = encoder.linear(np.ones(encoder.n_features_), 0.0)
    for encode in (encoder.transform, folded.predict):
        with pytest.raises(FeatureError) as caught:
            encode(frame)
        assert caught.value.field == field
        assert caught.value.rows == [1]


def test_missing_column_is_reported(tiny) -> None:
    ratings, users, items = tiny
    encoder = PairEncoder().fit(ratings, users, items)
    with pytest.raises(FeatureError, match="occupation"):
        encoder.transform(_request().drop(columns="occupation"))


def test_encoder_refuses_bad_configuration_and_data(tiny) -> None:
    ratings, users, items = tiny
    with pytest.raises(ValueError, match="interactions"):
        PairEncoder(interactions=("zip_code",))
    with pytest.raises(ValueError, match="empty"):
        PairEncoder().fit(ratings.iloc[:0], users, items)
    with pytest.raises(ValueError, match="movies missing"):
        PairEncoder().fit(pd.concat([ratings, ratings.iloc[:1].assign(movie_id=99)]), users, items)


@pytest.mark.parametrize("n", [0, 1, 5, 32, 33, 500])
def test_positions_match_pandas_for_few_and_many_ids(n: int) -> None:
    from app.recommender.features import _positions

    index = pd.Index(np.array([10, 3, 77, 5, 1000], dtype=np.int64))
    ids = np.random.default_rng(n).choice(np.array([3, 5, 10, 11, 77, 1000, -1], dtype=np.int64), size=n)
    got = _positions(index, ids)
    assert got.tolist() == index.get_indexer(ids).tolist()


@pytest.fixture
def tiny_plus(tiny) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``tiny`` with a known user who liked nothing (4) and a second young man who liked GoldenEye (5)."""
    ratings, users, items = tiny
    items = items.assign(year=pd.array([1995, 1982, None], dtype="Int64"))  # movies differ by year too
    users = pd.concat(
        [users, pd.DataFrame({"user_id": [4, 5], "age": [30, 25], "gender": ["M", "M"],
                              "occupation": ["student", "student"], "zip_code": ["00004", "00005"]})],
        ignore_index=True,
    )  # fmt: skip
    ratings = pd.concat(
        [ratings, pd.DataFrame({"user_id": [4, 5], "movie_id": [3, 2], "rating": [2.0, 5.0],
                                "timestamp": [400, 500]})],
        ignore_index=True,
    )  # fmt: skip
    return ratings, users, items


def _every_kind_of_row() -> pd.DataFrame:
    """Cold, known (with and without likes), unknown ids, unseen gender and occupations, every movie."""
    return pd.DataFrame(
        {
            "age": [24, 40, 60, 13, 33, 30, 30, 25, 90, 40, 18, 24],
            "gender": ["M", "F", "F", "O", "M", "M", "O", "M", "F", "O", "F", "M"],
            "occupation": ["student", "engineer", "retired", "none", "doctor", "student", "student",
                           "artist", "student", "engineer", "other", "student"],
            "movie_id": [1, 2, 3, 1, 3, 1, 2, 2, 3, 3, 1, 2],
            "user_id": pd.array([1, None, 3, 42, 2, 4, 4, 5, None, 1, 5, None], dtype="Int64"),
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"interactions": ("gender", "age_bucket", "occupation"), "prior_weight": 3.0,
         "group_prior_weight": 7.0, "user_prior_weight": 2.0},
        {"interactions": ()},
    ],
)  # fmt: skip
def test_the_folded_linear_model_equals_the_design_matrix_times_the_weights(
    tiny_plus, settings: dict[str, object]
) -> None:
    ratings, users, items = tiny_plus
    encoder = PairEncoder(**settings).fit(ratings, users, items)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    rows = _every_kind_of_row()
    design = encoder.transform(rows).astype(np.float64)
    for _ in range(3):
        coef, intercept = rng.normal(size=encoder.n_features_), float(rng.normal())
        folded = encoder.linear(coef, intercept)
        np.testing.assert_allclose(folded.predict(rows), design @ coef + intercept, rtol=0, atol=1e-5)
    # each weight reaches the prediction through its own feature: one weight at a time
    for column in range(encoder.n_features_):
        coef = np.zeros(encoder.n_features_)
        coef[column] = 1.0
        expected = design[:, column]
        got = encoder.linear(coef, 0.0).predict(rows)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=encoder.feature_names[column])


def test_the_folded_linear_model_predicts_a_row_alike_alone_and_in_a_batch(tiny_plus) -> None:
    ratings, users, items = tiny_plus
    encoder = PairEncoder().fit(ratings, users, items)
    folded = encoder.linear(np.random.default_rng(3).normal(size=encoder.n_features_), 0.5)
    rows = pd.concat([_every_kind_of_row()] * 4, ignore_index=True)  # over 32 rows: pandas' indexer
    together = folded.predict(rows)
    one_by_one = np.concatenate([folded.predict(rows.iloc[[i]]) for i in range(len(rows))])
    np.testing.assert_array_equal(together, one_by_one)
    with pytest.raises(ValueError, match="weights"):
        encoder.linear(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="not finite"):
        encoder.linear(np.full(encoder.n_features_, np.nan), 0.0)


def test_a_known_user_with_an_unseen_gender_is_encoded_alike_with_or_without_cold_rows(tiny_plus) -> None:
    # user 4 liked nothing, so a request of theirs takes the genre profile of the request's group;
    # for an unseen gender that is the training gender mix, whether or not the batch holds a
    # cold row (it used to depend on that)
    ratings, users, items = tiny_plus
    encoder = PairEncoder().fit(ratings, users, items)
    known = pd.DataFrame({"age": [25], "gender": ["O"], "occupation": ["student"], "movie_id": [2],
                          "user_id": pd.array([4], dtype="Int64")})  # fmt: skip
    cold = known.assign(user_id=pd.array([None], dtype="Int64"))
    alone = encoder.transform(known)
    with_cold = encoder.transform(pd.concat([known, cold], ignore_index=True))
    np.testing.assert_array_equal(alone[0], with_cold[0])
    # and it is the cold row's profile: the mix of the young men's (Toy Story and GoldenEye) and
    # the overall one (nobody young and female)
    assert _raw(encoder, alone, "genre_match")[0] == pytest.approx(_raw(encoder, with_cold, "genre_match")[1])
