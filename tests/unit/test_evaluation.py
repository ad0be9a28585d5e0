"""The split procedures of EVALUATION.md, exactly, and the protocol runners on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.recommender.evaluation import (
    evaluate,
    format_table,
    protocol_a,
    protocol_b,
    split_ratings,
    split_users,
)
from app.recommender.models import make_model

pytestmark = pytest.mark.unit


def test_user_split_follows_the_documented_procedure() -> None:
    ids = np.array([5, 3, 9, 1, 7, 2, 8, 4, 6, 10])
    train, test = split_users(ids, seed=3)
    expected = np.arange(1, 11)
    np.random.default_rng(3).shuffle(expected)
    assert sorted(test.tolist()) == sorted(expected[:2].tolist())
    assert sorted(train.tolist()) == sorted(expected[2:].tolist())


def test_rating_split_holds_out_20_percent_per_user_in_file_order() -> None:
    ratings = pd.DataFrame(
        {
            "user_id": [2, 1, 2, 1, 1, 2, 1, 1],
            "movie_id": [10, 11, 12, 13, 14, 15, 16, 17],
            "rating": [4.0] * 8,
        }
    )
    train, held = split_ratings(ratings, seed=0)
    rng = np.random.default_rng(0)
    expected = set()
    for user in (1, 2):  # ascending id order, positions in file order
        positions = np.flatnonzero(ratings["user_id"].to_numpy() == user)
        rng.shuffle(positions)
        expected |= set(positions[: round(0.2 * len(positions))].tolist())
    assert set(held.index) == expected
    assert len(train) + len(held) == len(ratings)


def test_protocols_run_on_synthetic_data(synthetic_data) -> None:
    result = protocol_a(make_model("segment_most_liked"), synthetic_data, seed=0)
    assert 0.0 < result["ndcg@10"] <= 1.0 and result["n_users"] > 0
    result_b = protocol_b(make_model("most_liked"), synthetic_data, seed=0)
    assert 0.0 <= result_b["ndcg@10"] <= 1.0
    with pytest.raises(ValueError):
        protocol_b(make_model("segment_most_liked"), synthetic_data, seed=0)


def test_segment_model_beats_global_popularity_on_planted_taste(synthetic_data) -> None:
    # the synthetic users like "their" genre by gender: segments must find it
    report = evaluate(synthetic_data, ["most_rated", "segment_most_liked"], "A", seeds=(0, 1, 2))
    summary = {name: entry["summary"]["ndcg@10_mean"] for name, entry in report["models"].items()}
    assert summary["segment_most_liked"] > summary["most_rated"]
    table = format_table(report)
    assert "segment_most_liked" in table and "most_rated" in table


def test_selection_breaks_protocol_a_ties_with_protocol_b() -> None:
    from app.recommender.training import select_best

    def report(values: dict[str, float]) -> dict:
        return {"models": {n: {"summary": {"ndcg@10_mean": v}} for n, v in values.items()}}

    a = report({"cold_only": 0.43, "hybrid_weak": 0.43, "hybrid_strong": 0.43, "worse": 0.40})
    b = report({"hybrid_weak": 0.30, "hybrid_strong": 0.38, "worse": 0.50})
    assert select_best(a, b) == "hybrid_strong"
    assert select_best(a) == "cold_only"  # no protocol B: first listed among equals
    assert select_best(report({"x": 0.1, "y": 0.2}), b) == "y"


def test_protocol_a_pads_short_lists_instead_of_repeating_the_last_movie(synthetic_data) -> None:
    """A model that cannot score most movies (NaN) ranks fewer than k: top_n pads with -1, and
    protocol A indexed the catalogue with it, so every list ended with the last movie, repeated
    (a hit counted up to 7 times per user, the coverage one movie too high)."""
    from app.recommender.models.popularity import GlobalPopularity

    class ThreeMovies(GlobalPopularity):
        def score_segments(self, segments):  # type: ignore[no-untyped-def]
            scores = super().score_segments(segments)
            scores[:, 3:] = np.nan
            return scores

    result = protocol_a(ThreeMovies(), synthetic_data, seed=0)
    assert result["coverage@10"] == pytest.approx(3 / len(synthetic_data.items))
    assert result["ndcg@10"] <= 1.0


def test_the_table_names_the_seeds_its_ndcg_column_averages(synthetic_data) -> None:
    """``movierec evaluate --seeds 0`` (or ``5,6``) printed ``ndcg@10 (0-4)`` above a mean over
    seed 0 alone (or 5 and 6): the header named the standard seeds whatever ran."""

    def header(seeds: tuple[int, ...]) -> str:
        report = evaluate(synthetic_data, ["most_rated"], "A", seeds=seeds)
        return format_table(report).splitlines()[1]

    assert "ndcg@10 (0-4)" in header((0, 1, 2, 3, 4, 42))
    assert "ndcg@10 (0)" in header((0,))
    assert "ndcg@10 (0-2)" in header((0, 1, 2, 42))
    assert "ndcg@10 (5,7)" in header((5, 7))
    assert "ndcg@10 (0,3)" in header((0, 3))


def test_a_report_at_another_k_is_tabled_and_plotted_at_its_k(synthetic_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """evaluate(k=5) keys its metrics ndcg@5, ...: format_table and the PNG looked up ndcg@10 and
    raised KeyError, so a report at any other k could not be printed or written."""
    from app.recommender.report import write_report

    report = evaluate(synthetic_data, ["most_rated"], "A", seeds=(0,), k=5)
    assert "ndcg@5 (0)" in format_table(report).splitlines()[1]
    json_path, png_path = write_report(report, tmp_path / "report.json")
    assert json_path.is_file() and png_path.stat().st_size > 0


def test_training_says_what_it_evaluates_before_the_quiet_minutes(synthetic_data, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """`make run`'s first `movierec train` printed nothing for one to three minutes (every
    candidate through protocols A and B) before "selected …": a new user could not tell it
    from a hang. It now says first what it evaluates and that it takes a while."""
    import logging

    from app.recommender.training import train

    with caplog.at_level(logging.INFO, logger="app.recommender.training"):
        train(synthetic_data, tmp_path / "model", ["most_rated", "most_liked"], seeds=(0, 1))
    messages = [r.getMessage() for r in caplog.records if r.name == "app.recommender.training"]
    assert messages[0] == (
        "evaluating 2 candidates (most_rated, most_liked) on protocols A and B, split seeds 0,1, "
        "then fitting the best on all data: a minute or more on ml-100k"
    )
    assert messages[1].startswith("selected ")


def test_the_evaluate_command_runs_both_protocols_unless_one_is_named(  # type: ignore[no-untyped-def]
    synthetic_data_dir, tmp_path, monkeypatch
) -> None:
    """EVALUATION.md: `movierec evaluate` runs both protocols. It ran protocol A alone unless
    given `--protocol B`, so `make evaluate` called it twice. Without --protocol it now prints
    both tables (each headed by its protocol) and writes each protocol's report, in the shape a
    one-protocol run writes: by default var/reports/protocol-<A|B>.json, with --out X.json as
    X-A.json and X-B.json; --protocol A|B still runs one, into --out itself."""
    import json

    from click.testing import CliRunner

    from app.cli import cli

    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--data-dir", str(synthetic_data_dir), "--models", "most_liked,segment_most_liked"]
    args += ["--seeds", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines.index("protocol A") < lines.index("protocol B")
    assert "skipped (protocol not applicable): segment_most_liked" in result.output  # protocol B's table
    reports = tmp_path / "var" / "reports"
    for protocol in ("A", "B"):
        report = json.loads((reports / f"protocol-{protocol}.json").read_text())
        assert report["protocol"] == protocol and report["seeds"] == [0]
        assert "most_liked" in report["models"] and (reports / f"protocol-{protocol}.png").is_file()
        assert f"report: {reports.relative_to(tmp_path) / f'protocol-{protocol}.json'}" in result.output
    assert sorted(json.loads((reports / "protocol-B.json").read_text())["skipped"]) == ["segment_most_liked"]

    result = CliRunner().invoke(cli, [*args, "--out", "out/eval.json"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "eval-A.json", "eval-A.png", "eval-B.json", "eval-B.png"
    ]  # fmt: skip

    result = CliRunner().invoke(cli, [*args, "--protocol", "B", "--out", "one/b.json"])
    assert result.exit_code == 0, result.output
    assert "protocol A" not in result.output.splitlines()
    assert json.loads((tmp_path / "one" / "b.json").read_text())["protocol"] == "B"
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["b.json", "b.png"]


def test_training_selects_by_the_mean_over_every_seed_it_was_given(synthetic_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`movierec train --seeds 0,42` summarised (and so selected and reported) by the standard seeds
    0-4 among its seeds: by seed 0 alone, seed 42 evaluated and thrown away, the line it prints
    '± 0.000', while the manifest said the selection was over 0 and 42. Like the training flow, it
    now takes the mean over every seed it was given, and its line names them."""
    import json

    from app.recommender.training import summary_line, train

    result = train(synthetic_data, tmp_path / "model", ["most_rated", "segment_most_liked"], seeds=(0, 42))
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["selection"]["seeds"] == [0, 42]
    for report, protocol in ((result.report_a, "A"), (result.report_b, "B")):
        assert report["summary_seeds"] == [0, 42]
        for name, entry in report["models"].items():
            per_seed = [entry["per_seed"][s]["ndcg@10"] for s in ("0", "42")]
            assert entry["summary"]["ndcg@10_mean"] == pytest.approx(np.mean(per_seed))
            stored = manifest["metrics"][name][protocol]
            assert stored["ndcg@10_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert "protocol A ndcg@10 (seeds 0,42)=" in summary_line(result)


def test_users_without_a_liked_test_movie_are_left_out_of_every_metric(synthetic_data) -> None:  # type: ignore[no-untyped-def]
    """Relevant = rated >= 4 (EVALUATION.md): a test user with no such movie (protocol A: none at
    all; protocol B: none held out) has no ideal DCG, so no NDCG. They are left out of every mean
    and of coverage, as EVALUATION.md's reference figures were measured (docs/models.md), and
    ``n_users`` counts the users measured."""
    from app.recommender.data import MovieLens

    _, test_ids = split_users(synthetic_data.users["user_id"], seed=0)
    dislikes_all = int(test_ids[0])  # a protocol-A test user, and a protocol-B user like any other
    ratings = synthetic_data.ratings.copy()
    ratings.loc[ratings["user_id"] == dislikes_all, "rating"] = 1.0
    data = MovieLens(ratings=ratings, users=synthetic_data.users, items=synthetic_data.items)

    liked = ratings[ratings["rating"] >= 4]
    measured_a = set(liked.loc[liked["user_id"].isin(test_ids), "user_id"])
    assert dislikes_all not in measured_a and len(measured_a) < len(test_ids)
    assert protocol_a(make_model("most_liked"), data, seed=0)["n_users"] == len(measured_a)

    _, held = split_ratings(ratings, seed=0)
    measured_b = set(held.loc[held["rating"] >= 4, "user_id"])
    assert dislikes_all not in measured_b and len(measured_b) < held["user_id"].nunique()
    assert protocol_b(make_model("most_liked"), data, seed=0)["n_users"] == len(measured_b)


def _first_users(data, n: int):  # type: ignore[no-untyped-def]
    from app.recommender.data import MovieLens

    keep = data.users["user_id"].iloc[:n]
    return MovieLens(
        ratings=data.ratings[data.ratings["user_id"].isin(keep)], users=data.users.iloc[:n], items=data.items
    )


def test_too_little_data_to_evaluate_is_said_not_a_key_error(synthetic_data) -> None:  # type: ignore[no-untyped-def]
    """Data too small for a split (2 users: round(0.4) = 0 test users) raised KeyError: 'age' in
    protocol A (an empty float mask selected columns), and test users without a movie rated >= 4,
    or no held-out like in protocol B, raised "no users to evaluate": `movierec train` and
    `evaluate` ended in a traceback. Each protocol now says what is missing, and the commands
    print it as one error line."""
    from app.recommender.data import MovieLens
    from app.recommender.evaluation import TooLittleDataError

    with pytest.raises(TooLittleDataError, match=r"protocol A, split seed 0: no test user \(0 of 2 users\)"):
        protocol_a(make_model("most_liked"), _first_users(synthetic_data, 2), seed=0)
    disliked = synthetic_data.ratings.assign(rating=2.0)
    dull = MovieLens(ratings=disliked, users=synthetic_data.users, items=synthetic_data.items)
    with pytest.raises(TooLittleDataError, match="protocol A, split seed 0: no test user"):
        protocol_a(make_model("most_liked"), dull, seed=0)
    with pytest.raises(TooLittleDataError, match="protocol B, split seed 0: no user"):
        protocol_b(make_model("most_liked"), dull, seed=0)


def test_the_splits_are_checked_before_any_model_is_fitted(synthetic_data) -> None:  # type: ignore[no-untyped-def]
    """The training flow's first step refuses data too small for its seeds (app/pipeline/flow.py):
    check_splits says what the protocol would say once a model was fitted."""
    from app.recommender.data import MovieLens
    from app.recommender.evaluation import TooLittleDataError, check_splits

    check_splits(synthetic_data, [0, 1, 42])
    with pytest.raises(TooLittleDataError, match=r"protocol A, split seed 0: no test user \(0 of 2 users\)"):
        check_splits(_first_users(synthetic_data, 2), [0])
    dull = MovieLens(
        ratings=synthetic_data.ratings.assign(rating=2.0),
        users=synthetic_data.users,
        items=synthetic_data.items,
    )
    with pytest.raises(TooLittleDataError, match="protocol B, split seed 3: no user"):
        check_splits(dull, [3], ["B"])


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_commands_say_the_data_is_too_little_to_evaluate(synthetic_data_dir, tmp_path, command) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from app.cli import cli

    tiny = tmp_path / "tiny"
    tiny.mkdir()
    for name, separator in (("u.data", "\t"), ("u.user", "|")):
        lines = (synthetic_data_dir / name).read_text().splitlines(keepends=True)
        (tiny / name).write_text("".join(line for line in lines if line.split(separator)[0] in ("1", "2")))
    (tiny / "u.item").write_bytes((synthetic_data_dir / "u.item").read_bytes())
    args = [command, "--data-dir", str(tiny), "--models", "most_liked", "--seeds", "0"]
    args += (
        ["--model-dir", str(tmp_path / "new" / "model")]
        if command == "train"
        else ["--out", str(tmp_path / "new" / "r.json")]
    )
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Error: protocol A, split seed 0: no test user (0 of 2 users)" in result.output
    # refused for its data, as one whose files do not parse: the output directory made is removed
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_a_candidates_figures_do_not_depend_on_the_candidates_run_before_it(synthetic_data, protocol) -> None:  # type: ignore[no-untyped-def]
    """Each run draws its split from a generator of its own, default_rng(seed), and each model from
    its own random_state: no generator is shared between candidates (or seeds), so a candidate
    measures the same whichever candidates ran before it and in whatever order."""
    names = ["lgbm_ranker", "ease", "item_knn", "most_liked"]

    def figures(order: list[str]) -> dict[str, dict[str, dict[str, float]]]:
        report = evaluate(synthetic_data, order, protocol, seeds=(1, 0))
        return {
            name: {seed: {m: v for m, v in r.items() if "seconds" not in m and "ms" not in m}
                   for seed, r in entry["per_seed"].items()}
            for name, entry in report["models"].items()
        }  # fmt: skip

    forward = figures(names)
    assert forward == figures(names[::-1])
    assert forward["most_liked"] == figures(["most_liked"])["most_liked"]


def test_the_plot_names_the_seeds_its_bars_average(synthetic_data, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`movierec evaluate`'s PNG said 'mean over split seeds' under a title listing 0, 1, 2, 3, 4, 42,
    while its bars (as the table's column) average the summary's seeds, 0-4 alone: seed 42 read as
    averaged in. The axis now names the seeds the bars average, as the table's header does."""
    from matplotlib.figure import Figure

    from app.recommender.report import plot_report

    labels: list[tuple[str, str]] = []
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda fig, *a, **k: labels.append((fig.axes[0].get_ylabel(), fig.axes[0].get_title())),
    )
    plot_report(evaluate(synthetic_data, ["most_rated"], "A", seeds=(0, 1, 42)), tmp_path / "a.png")
    plot_report(
        evaluate(synthetic_data, ["most_rated"], "A", seeds=(0, 42), summary_over=(0, 42)), tmp_path / "b.png"
    )
    assert labels[0][0] == "mean ± sd over split seeds 0-1" and "seeds 0, 1, 42" in labels[0][1]
    assert labels[1][0] == "mean ± sd over split seeds 0,42"
