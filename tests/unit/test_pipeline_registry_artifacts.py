"""A training branch's artifacts: copied straight into a local store, or through MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.registry.mlflow_registry import Registry, default_artifact_root, default_tracking_uri

pytestmark = pytest.mark.unit


def _files(registry: Registry, run_id: str) -> dict[str, bytes]:
    """Every artifact of the run, read back through MLflow."""
    import mlflow.artifacts

    out = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=registry.tracking_uri))
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_local_copy_stores_what_the_mlflow_client_stores(tmp_path: Path) -> None:
    var = tmp_path / "var"
    (var / "mlflow").mkdir(parents=True)
    registry = Registry(default_tracking_uri(var), artifact_root=default_artifact_root(var))
    parent = registry.start_pipeline_run({"data_hash": "d"})
    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "manifest.json").write_text('{"version": "v"}')
    (bundle / "sub" / "table.npy").write_bytes(b"\x00\x01")
    report = tmp_path / "protocol-A.json"
    report.write_text("{}")

    copied = registry.start_candidate_run(parent, "copied", {})
    uri = registry.artifact_uri(copied)
    assert uri.startswith("file://")
    # A fresh registry, as in a training branch: the copy must not need the MLflow client.
    branch = Registry(default_tracking_uri(var), artifact_root=default_artifact_root(var))
    branch.upload_candidate_artifacts(copied, bundle, [report], uri)
    assert branch._client is None

    logged = registry.start_candidate_run(parent, "logged", {})
    registry.upload_candidate_artifacts(logged, bundle, [report])

    expected = {"bundle/manifest.json", "bundle/sub/table.npy", "reports/protocol-A.json"}
    assert set(_files(registry, copied)) == expected
    assert _files(registry, copied) == _files(registry, logged)


def _bundle(store: Path, name: str, ndcg: float) -> Path:
    import json

    bundle = store / name
    bundle.mkdir(parents=True)
    metrics = {"ease": {"A": {"ndcg@10_mean": ndcg}}}
    (bundle / "manifest.json").write_text(json.dumps({"served_model": "ease", "metrics": metrics}))
    return bundle


@pytest.mark.parametrize(("registered", "old_ndcg", "warned"), [(False, 0.43, True), (True, 0.43, False),
                                                                  (False, 0.40, False)])  # fmt: skip
def test_an_export_over_a_better_unregistered_bundle_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, registered: bool, old_ndcg: float, warned: bool
) -> None:
    """`make train` / `make run` write a bundle the registry does not know: the first flow's
    champion replaces it whatever it scored (nothing to gate against). The export names it."""
    import logging
    from types import SimpleNamespace

    from app.recommender.bundle import point_latest
    from app.registry.export import _warn_if_replacing_a_better_unregistered_bundle

    store = tmp_path / "model"
    _bundle(store, "20260101T000000-aaaaaa", old_ndcg)
    point_latest(store, "20260101T000000-aaaaaa")
    new = _bundle(store, "20260102T000000-bbbbbb", 0.41)
    known = ["20260101T000000-aaaaaa"] if registered else []
    registry = SimpleNamespace(versions=lambda: [SimpleNamespace(bundle_version=v) for v in known])
    with caplog.at_level(logging.WARNING, logger="app.registry.export"):
        _warn_if_replacing_a_better_unregistered_bundle(registry, store, new)  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(messages) == warned
    if warned:
        assert (
            "20260101T000000-aaaaaa" in messages[0] and "0.4300" in messages[0] and "ln -sfn" in messages[0]
        )
