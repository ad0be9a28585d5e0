"""The gate refuses a candidate trained on much less data than the champion it would replace.

The gate re-evaluates the champion's recipe on the run's own data: a run on a fraction of the
data (the feedback database emptied or replaced, the raw files swapped for a subset) measured the
champion's recipe on that fraction too, found the candidate "not worse", and replaced a champion
trained on far more. Each version now records its training-data size (tags ``n_ratings``,
``n_users``, ``n_movies``); a run whose ratings, users or movies fall below
``MOVIEREC_GATE_MIN_DATA_FRACTION`` of the champion's is refused, unless the operator turns the
check off (the setting at 0, or ``movierec pipeline run --allow-less-data``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.pipeline.candidates import publish_candidate, train_candidate
from app.pipeline.ingest import Ingested
from app.recommender.data import MovieLens
from app.registry.mlflow_registry import CHAMPION, Registry
from tests.helpers import flow_settings, register_bundle
from tests.release_step import ReleaseStep

pytestmark = pytest.mark.unit

CANDIDATE = "most_liked"


class _Run(ReleaseStep):
    """The state of the flow's release step for a run on ``data``, with the flow's own methods."""

    def __init__(self, data: MovieLens) -> None:
        ingested = Ingested(data)
        self.data, self.ingest_stats, self.data_hash = data, ingested.stats(), ingested.data_hash
        self.configured_names, self.seed_list, self.code_version = [CANDIDATE], [0], "c0de"
        self.summary_path, self.pipeline_run_id, self.started = "", "", 0.0
        self.snapshot_id, self.db_user_features = "s", 0

    def release(self, registry: Registry, settings: Any, tmp_path: Path) -> None:
        """Train and publish the candidate as the train step does, then register, gate and export."""
        self.pipeline_run_id = registry.start_pipeline_run({"data_hash": self.data_hash})
        run_id = registry.start_candidate_run(self.pipeline_run_id, CANDIDATE, {})
        result = train_candidate(self.data, CANDIDATE, self.seed_list)
        manifest = {"code_version": self.code_version, "data_hash": self.data_hash}
        artifacts = registry.artifact_uri(run_id)
        published = publish_candidate(
            result, self.data, registry, run_id, manifest, None, tmp_path / "scratch", artifacts
        )
        self._register([published], registry)
        self._gate(registry, settings)
        self._export(registry, settings)


def _subset(data: MovieLens, share: float) -> MovieLens:
    """The first ``share`` of the users (by id) with their ratings: a data directory swapped for a subset."""
    ids = sorted(data.users["user_id"])[: int(len(data.users) * share)]
    users = data.users[data.users["user_id"].isin(ids)].reset_index(drop=True)
    ratings = data.ratings[data.ratings["user_id"].isin(ids)].reset_index(drop=True)
    return replace(data, users=users, ratings=ratings)


def test_every_version_records_the_size_of_the_data_it_was_trained_on(
    tmp_path: Path, synthetic_data: Any
) -> None:
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    run = _Run(synthetic_data)
    run.release(registry, settings, tmp_path)
    tags = registry.get(run.registered[0]["version"]).tags
    assert tags["n_ratings"] == str(len(synthetic_data.ratings))
    assert tags["n_users"] == str(len(synthetic_data.users))
    assert tags["n_movies"] == str(len(synthetic_data.items))


def test_a_run_on_much_less_data_does_not_replace_the_champion(tmp_path: Path, synthetic_data: Any) -> None:
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    first = _Run(synthetic_data)
    first.release(registry, settings, tmp_path)
    champion = registry.champion()
    assert champion is not None and first.promoted == champion.version

    second = _Run(_subset(synthetic_data, 0.5))  # the same recipe, on half the users
    second.release(registry, settings, tmp_path)

    assert second.promoted is None, "a model trained on half the data replaced the champion"
    assert registry.champion().version == champion.version  # type: ignore[union-attr]
    refused = registry.get(second.registered[0]["version"])
    assert refused.decision == "rejected"
    why = next(r for r in refused.reasons if "less training data than champion" in r)
    assert f"champion v{champion.version}" in why
    assert f"{len(second.data.ratings)} ratings" in why and f"{len(synthetic_data.ratings)}" in why
    assert "MOVIEREC_GATE_MIN_DATA_FRACTION" in why and "--allow-less-data" in why


def test_the_operator_can_allow_a_run_on_less_data(tmp_path: Path, synthetic_data: Any) -> None:
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    _Run(synthetic_data).release(registry, settings, tmp_path)

    smaller = _Run(_subset(synthetic_data, 0.5))
    smaller.release(registry, settings.model_copy(update={"gate_min_data_fraction": 0.0}), tmp_path)

    assert smaller.promoted is not None
    champion = registry.champion()
    assert champion is not None and champion.version == smaller.promoted
    assert any("the data-size check is off" in r for r in champion.reasons), champion.reasons


def test_the_same_or_more_data_is_not_refused(tmp_path: Path, synthetic_data: Any) -> None:
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    first = _Run(_subset(synthetic_data, 0.9))
    first.release(registry, settings, tmp_path)
    assert not any("training data" in r for r in registry.get(first.promoted).reasons), "a first run"

    grown = _Run(synthetic_data)
    grown.release(registry, settings, tmp_path)
    assert grown.promoted is not None
    reasons = registry.get(grown.promoted).reasons
    assert any(f"training data {len(synthetic_data.ratings)} ratings" in r for r in reasons), reasons


def test_a_champion_without_size_tags_is_compared_by_its_bundles_manifest(
    tmp_path: Path, synthetic_data: Any, model_store: Path
) -> None:
    """A champion registered before the size tags: its bundle's manifest recorded its ratings."""
    settings = flow_settings(tmp_path)
    registry = Registry.from_settings(settings)
    old = register_bundle(registry, model_store)
    registry.tag_version(old.version, {"ndcg_a": "0.0", "gate_decision": "promoted"})
    registry.set_alias(CHAMPION, old.version)

    run = _Run(_subset(synthetic_data, 0.5))
    run.release(registry, settings, tmp_path)
    assert run.promoted is None
    why = next(r for r in registry.get(run.registered[0]["version"]).reasons if "less training data" in r)
    assert f"{len(synthetic_data.ratings)} ratings" in why and "its bundle's manifest" in why


@pytest.mark.parametrize(
    ("run", "refused"),
    [
        ({"n_ratings": 1000, "n_users": 100, "n_movies": 50}, False),  # the same
        ({"n_ratings": 1500, "n_users": 120, "n_movies": 50}, False),  # growth
        ({"n_ratings": 900, "n_users": 90, "n_movies": 45}, False),  # exactly the fraction
        ({"n_ratings": 899, "n_users": 100, "n_movies": 50}, True),  # fewer ratings
        ({"n_ratings": 1000, "n_users": 89, "n_movies": 50}, True),  # fewer users (feedback emptied)
        ({"n_ratings": 1000, "n_users": 100, "n_movies": 44}, True),  # fewer movies
    ],
)
def test_each_of_ratings_users_and_movies_counts(run: dict[str, int], refused: bool) -> None:
    from app.pipeline.gate import data_size_check

    champion = {"n_ratings": 1000, "n_users": 100, "n_movies": 50}
    check = data_size_check("3", champion, run, 0.9)
    assert check.refused is refused, check.note
    assert "champion v3" in check.note


def test_no_champion_size_recorded_is_no_refusal() -> None:
    from app.pipeline.gate import data_size_check

    check = data_size_check("3", None, {"n_ratings": 10, "n_users": 5, "n_movies": 5}, 0.9)
    assert not check.refused and "not recorded" in check.note


def test_pipeline_run_allow_less_data_turns_the_check_off_for_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.pipeline.runner as runner
    from app.cli import cli

    seen: list[float] = []

    def run_flow(settings: Any, *_args: Any, **_kwargs: Any) -> Any:
        seen.append(settings.gate_min_data_fraction)
        raise runner.PipelineError("stopped here by the test")

    monkeypatch.setattr(runner, "run_flow", run_flow)
    monkeypatch.setenv("MOVIEREC_VAR_DIR", str(tmp_path / "var"))
    for args in (["pipeline", "run"], ["pipeline", "run", "--allow-less-data"]):
        result = CliRunner().invoke(cli, args)
        assert "stopped here by the test" in result.output, result.output
    assert seen == [0.9, 0.0]
