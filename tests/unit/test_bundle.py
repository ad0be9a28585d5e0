"""Bundles: written atomically, loaded in every accepted form, refused when bad."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pytest

from app.recommender.bundle import (
    EXPORT_STAGING_PREFIX,
    STAGING_PREFIX,
    BundleError,
    build_tables,
    load_bundle,
    point_latest,
    process_alive,
    process_identity,
    process_tag,
    write_bundle,
)
from app.recommender.models import make_model
from app.recommender.ranking import top_n
from app.recommender.segments import Segment, all_segments

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_top_n_orders_excludes_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert top_n(scores, 3).tolist() == [[1, 3, 2]]  # ties keep column order
    assert top_n(scores, 4, [np.array([1, 2])]).tolist() == [[3, 0, -1, -1]]


def test_store_bundle_has_every_part_and_latest(model_store: Path) -> None:
    bundle_dir = (model_store / "latest").resolve()
    for name in ("manifest.json", "model.pkl", "catalogue.csv", "segment_top.npy", "test_data.json"):
        assert (bundle_dir / name).is_file(), name
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["served_model"] in manifest["metrics"]
    assert {"code_version", "data_hash", "created_at", "version"} <= set(manifest)
    staging = [p for p in model_store.iterdir() if p.name.startswith((STAGING_PREFIX, EXPORT_STAGING_PREFIX))]
    assert not staging, "no staging directories left behind"


def test_every_segment_is_answered_without_repeats(model_store: Path) -> None:
    bundle = load_bundle(model_store)
    for segment in all_segments():
        titles = [r.title for r in bundle.recommend_segment(segment, 100)]
        assert titles and len(titles) == len(set(titles))


def test_known_users_never_get_what_they_rated(synthetic_data, tmp_path: Path) -> None:
    model = make_model("most_liked").fit(synthetic_data.ratings, synthetic_data.users, synthetic_data.items)
    tables = build_tables(model, synthetic_data.ratings)
    rated = synthetic_data.ratings.groupby("user_id")["movie_id"].apply(set)
    for row, user_id in enumerate(tables.user_ids):
        served = {int(model.item_ids[p]) for p in tables.user_top[row] if p >= 0}
        assert not served & rated[user_id]


def test_a_lone_pickle_leaves_out_what_known_users_rated(synthetic_data, tmp_path: Path) -> None:
    """ML_MODEL_PATH=model.pkl has no data set beside it: a model that kept its training
    ratings (EASE, item-kNN) builds the same known users' lists as training did; one that kept
    none (popularity) serves no known users' lists rather than lists of movies already rated."""
    data = synthetic_data
    rated = data.ratings.groupby("user_id")["movie_id"].apply(set)
    for name in ("ease", "item_knn"):
        model = make_model(name).fit(data.ratings, data.users, data.items)
        path = tmp_path / name / "model.pkl"
        path.parent.mkdir()
        joblib.dump(model, path)
        alone = load_bundle(path, catalogue_fallback=data.items)
        trained = build_tables(model, data.ratings)
        assert len(alone.tables.user_ids) == len(rated)
        np.testing.assert_array_equal(alone.tables.user_top, trained.user_top)
        for user_id in alone.tables.user_ids[:20]:
            served = {r.movie_id for r in alone.recommend_user(int(user_id), 100)}
            assert served and not served & rated[user_id], (name, user_id)
    popularity = tmp_path / "most_liked" / "model.pkl"
    popularity.parent.mkdir()
    joblib.dump(make_model("most_liked").fit(data.ratings, data.users, data.items), popularity)
    alone = load_bundle(popularity, catalogue_fallback=data.items)
    assert len(alone.tables.user_ids) == 0
    with pytest.raises(KeyError):
        alone.recommend_user(int(data.ratings["user_id"].iloc[0]), 10)


def test_tarball_and_pickle_forms_load(model_store: Path, synthetic_data, tmp_path: Path) -> None:
    bundle_dir = (model_store / "latest").resolve()
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name)
    from_tar = load_bundle(archive)
    assert from_tar.version == load_bundle(bundle_dir).version

    pickle_path = tmp_path / "model.pkl"
    shutil.copy(bundle_dir / "model.pkl", pickle_path)
    with pytest.raises(BundleError, match="catalogue"):
        load_bundle(pickle_path)
    from_pickle = load_bundle(pickle_path, catalogue_fallback=synthetic_data.items)
    segment = Segment.of(25, "F", "artist")
    assert [r.title for r in from_pickle.recommend_segment(segment, 5)] == [
        r.title for r in from_tar.recommend_segment(segment, 5)
    ]


def _archive_with_private_tmp(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """The store's bundle as a .tar.gz, and a temporary directory of the test's own for extractions."""
    bundle_dir = (model_store / "latest").resolve()
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return archive, scratch


def test_a_tarball_is_extracted_once_and_again_only_when_damaged(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each load used to extract into a new temporary directory: a bundle left in /tmp per worker
    # start, recycle and reload
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)

    def extractions() -> list[Path]:
        return sorted(path for path in scratch.rglob("manifest.json"))

    first = load_bundle(archive)
    assert len(extractions()) == 1
    second = load_bundle(archive)
    assert extractions() == [second.path / "manifest.json"] and second.path == first.path
    assert not [path for path in second.path.parent.parent.iterdir() if path.name.startswith(".staging-")]

    (second.path / "segment_top.npy").unlink()  # a tmp cleaner's work
    third = load_bundle(archive)
    assert (third.path / "segment_top.npy").is_file() and len(extractions()) == 1
    assert third.version == first.version


def test_a_tarballs_extraction_is_named_by_its_sha256_computed_without_reading_it_whole(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extraction cache named an archive's extraction by ``sha256(path.read_bytes())``: the
    whole compressed bundle (hundreds of MB) in memory at every load, in every worker, only to hash
    it. It is hashed in chunks now, to the same name, so extractions cached before stay valid."""
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    cache = _extraction_cache(scratch)
    name = hashlib.sha256(archive.read_bytes()).hexdigest()[:32]  # the name caches already carry
    read_whole = Path.read_bytes

    def refuse_the_archive(self: Path) -> bytes:
        assert self != archive, f"{archive} read whole into memory"
        return read_whole(self)

    monkeypatch.setattr(Path, "read_bytes", refuse_the_archive)
    first = load_bundle(archive)
    assert first.path.parent == cache / name
    again = load_bundle(archive)  # found cached under that name
    assert again.path == first.path and (again.path / "manifest.json").is_file()


def test_a_link_to_an_archive_is_loaded_as_the_archive_not_unpickled(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ML_MODEL_PATH naming a link (``latest``, say) to a ``.tar.gz``: a file not named like an
    archive was handed to joblib, which unpickled the archive's bytes ("could not be unpickled:
    pop from empty list"). The name of what the link points at decides, as for the archive itself."""
    archive, _ = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    link = tmp_path / "latest"
    link.symlink_to(archive.name)
    loaded = load_bundle(link)
    assert loaded.version == load_bundle(archive).version
    assert (loaded.path / "manifest.json").is_file()


def test_a_store_whose_latest_is_an_archive_is_refused_naming_it(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's ``latest`` names one of its bundle directories (point_latest; reload, rollback and
    the dashboard list them): one pointing at an archive is refused with what it points at."""
    archive, _ = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    store = tmp_path / "store"
    store.mkdir()
    (store / "bundle.tar.gz").symlink_to(archive)
    (store / "latest").symlink_to("bundle.tar.gz")
    with pytest.raises(BundleError, match=r"store/latest points at .*bundle\.tar\.gz.*not a bundle dir"):
        load_bundle(store)


def test_a_shared_extraction_directory_is_not_used(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # extractions hold pickles: a cache directory other users can write to is never read
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    shared = _unusable_extraction_cache(scratch)
    loaded = load_bundle(archive)
    assert shared not in loaded.path.parents and not any(shared.iterdir())


def _unusable_extraction_cache(scratch: Path) -> Path:
    """An extraction cache under ``scratch`` that other users may write to: never used."""
    shared = scratch / f"movierec-bundles-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    return shared


def _private_extractions(scratch: Path) -> list[Path]:
    return sorted(scratch.glob("movierec-bundle-*"))


_LOAD_FORK_EXIT = """
import os, sys
from app import exit_hooks
from app.recommender.bundle import load_bundle
bundle = load_bundle(sys.argv[1])
pid = os.fork()  # as uwsgi forks its workers after loading the app (without lazy-apps)
if pid == 0:
    exit_hooks.run_exit_callbacks()  # a worker stopping gracefully
    os._exit(0 if bundle.path.is_dir() else 1)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), bundle.path.is_dir(), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_private_extraction_is_removed_when_the_process_that_made_it_exits_not_its_children(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a usable extraction cache each load extracted a whole bundle into a new
    ``$TMPDIR/movierec-bundle-*`` that nothing removed: every worker start, recycle and reload
    leaked one. The process that made it removes it at exit; a forked child, which inherits the
    exit callback and serves from the same bundle as its siblings, leaves it."""
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    _unusable_extraction_cache(scratch)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_FORK_EXIT, str(archive)],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["0", "True"]  # the child kept it, the parent still had it after
    assert _private_extractions(scratch) == []  # and removed it at its exit


def test_a_reload_removes_the_private_extraction_of_the_bundle_it_replaced(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests serve a loaded bundle from memory only, so the extraction of the one a reload
    replaced is removed at once (the one served stays until exit)."""
    from app.services.models import ModelHolder

    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    _unusable_extraction_cache(scratch)
    holder = ModelHolder(archive)
    first = holder.load()
    second = holder.load()
    assert _private_extractions(scratch) == [second.path.parent]
    assert second.path.is_dir() and not first.path.exists()
    segment = all_segments()[0]
    assert first.recommend_segment(segment, 5) == second.recommend_segment(segment, 5)  # still answers


def _extraction_cache(scratch: Path) -> Path:
    """The extraction cache ``load_bundle`` uses under ``scratch`` (this user's, 0700)."""
    cache = scratch / f"movierec-bundles-{os.getuid()}"
    cache.mkdir(mode=0o700)
    return cache


def _aged_tree(root: Path, when: float, files: dict[str, bytes] | None = None) -> Path:
    """``root`` holding ``files`` (a file itself when ``files`` is None), every entry of the tree
    last changed at ``when``."""
    if files is None:
        root.write_bytes(b"half")
        return _age(root, when)
    root.mkdir()
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    for path in sorted(root.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        _age(path, when)
    return _age(root, when)


HALF_EXTRACTED = {"20260101T000000-abcdef/model.pkl": b"half"}


def test_stale_extraction_staging_is_removed_at_the_next_extraction_fresh_and_finished_kept(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed while extracting a ``.tar.gz`` (SIGKILL, the OOM killer, harakiri) left its
    ``.staging-*`` directory in the extraction cache for ever: a bundle is hundreds of MB. The
    next extraction removes it by the model store's rule: this user's, unchanged for an hour
    anywhere in its tree. Another process's extraction at work, the finished extractions (an old
    one is another archive's, maybe being served) and everything else stay: among them a
    ``movierec-bundle-*`` directory in the shared temporary directory, which a live process that
    had no cache may be serving from however old it looks."""
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    cache = _extraction_cache(scratch)
    long_ago = time.time() - 2 * 3600
    stale = _aged_tree(cache / ".staging-k3j_x9q2", long_ago, HALF_EXTRACTED)
    busy = _aged_tree(cache / ".staging-p0o9i8u7", long_ago, HALF_EXTRACTED)
    os.utime(busy / "20260101T000000-abcdef" / "model.pkl")  # being written now, two levels down
    fresh = cache / ".staging-a1b2c3d4"
    fresh.mkdir()  # an extraction that has just begun
    finished = _aged_tree(cache / ("0" * 32), long_ago, {"20260101T000000-abcdef/manifest.json": b"{}"})
    others = [
        _aged_tree(cache / ".staging-notmkdtemp-k3j_x9q2", long_ago, HALF_EXTRACTED),
        _aged_tree(cache / ".staging-e5f6g7h8", long_ago),  # a file: not a staging directory
        _aged_tree(cache / ".writing-20260101T000000-abcdef-k3j_x9q2", long_ago, HALF_EXTRACTED),
        _aged_tree(scratch / "movierec-bundle-k3j_x9q2", long_ago, HALF_EXTRACTED),
        _aged_tree(scratch / ".staging-k3j_x9q2", long_ago, HALF_EXTRACTED),  # not in the cache
    ]
    if os.getuid() == 0:  # root can give a leftover to another user: never removed
        others.append(_aged_tree(cache / ".staging-q1w2e3r4", long_ago, HALF_EXTRACTED))
        os.lchown(others[-1], 12345, 12345)
        _age(others[-1], long_ago)
    loaded = load_bundle(archive)
    assert not os.path.lexists(stale)
    assert (busy / "20260101T000000-abcdef" / "model.pkl").read_bytes() == b"half" and fresh.is_dir()
    assert (finished / "20260101T000000-abcdef" / "manifest.json").read_bytes() == b"{}"
    assert [path.name for path in others if not os.path.lexists(path)] == []
    assert loaded.path.parent.parent == cache and (loaded.path / "manifest.json").is_file()


def test_stale_extraction_staging_is_removed_when_a_load_finds_its_extraction_cached(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed while extracting is restarted and extracts the archive again within the
    hour, so its leftover is still fresh then; every later load of that archive finds the
    extraction cached. The leftover is removed at one of those loads once it is an hour old,
    not left until another archive is extracted. The cached extraction stays and is what loads."""
    archive, _ = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    first = load_bundle(archive)
    cache = first.path.parent.parent
    stale = _aged_tree(cache / ".staging-k3j_x9q2", time.time() - 2 * 3600, HALF_EXTRACTED)
    _age(first.path.parent, time.time() - 30 * 24 * 3600)  # cached long ago
    again = load_bundle(archive)
    assert not os.path.lexists(stale)
    assert again.path == first.path and (again.path / "manifest.json").is_file()


def test_a_private_extraction_of_a_process_killed_outright_is_removed_once_it_is_dead_and_old(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a usable extraction cache, a process killed outright (SIGKILL, the OOM killer,
    harakiri) left its ``$TMPDIR/movierec-bundle-*``, a whole bundle, for ever: an old one could
    not be told from a live service's. Its name carries its maker's pid: a later load removes it
    once that process is gone and nothing in it changed for an hour. A living maker's (however
    old), a fresh one and one named without a pid (an earlier release's) stay."""
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    _unusable_extraction_cache(scratch)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    dead = int(gone.stdout)
    long_ago = time.time() - 2 * 3600
    stale = _aged_tree(scratch / f"movierec-bundle-{dead}-k3j_x9q2", long_ago, HALF_EXTRACTED)
    kept = [
        _aged_tree(scratch / f"movierec-bundle-{os.getpid()}-k3j_x9q2", long_ago, HALF_EXTRACTED),
        _aged_tree(scratch / f"movierec-bundle-{dead}-a1b2c3d4", time.time(), HALF_EXTRACTED),
        _aged_tree(scratch / "movierec-bundle-p0o9i8u7", long_ago, HALF_EXTRACTED),
    ]
    loaded = load_bundle(archive)
    assert not os.path.lexists(stale)
    assert [path.name for path in kept if not path.is_dir()] == []
    assert loaded.path.parent.name.startswith(f"movierec-bundle-{os.getpid()}-")  # names its maker
    assert (loaded.path / "manifest.json").is_file()


def test_a_process_is_alive_only_while_its_pid_runs_the_process_that_started_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pid names a process only while it runs: in a restarted container the new processes get
    the old ones' pids. With the identity recorded beside it (boot id, start time), a live pid
    started at another time is another process; where ``/proc`` cannot tell (macOS), or without
    an identity, the pid alone decides, as before."""
    import app.recommender.bundle as bundle_module

    me = process_identity(os.getpid())
    assert me is not None and me == process_identity(os.getpid())
    boot, ticks = me.rsplit("/", 1)
    assert process_alive(os.getpid(), me) and process_alive(os.getpid())
    assert not process_alive(os.getpid(), f"{boot}/{int(ticks) + 1}")  # the pid reused
    assert not process_alive(os.getpid(), f"{'0' * 8}-0000-0000-0000-{'0' * 12}/{ticks}")  # a reboot
    monkeypatch.setattr(bundle_module, "PROC", tmp_path / "no-proc")
    assert process_identity(os.getpid()) is None
    assert process_alive(os.getpid(), f"{boot}/{int(ticks) + 1}")


def test_without_an_identity_a_process_is_judged_by_its_pid_alone_without_reading_proc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing compares a start time that was not recorded: ``process_alive(pid)`` read
    ``/proc/<pid>/stat`` for it all the same, and a stale-leftover sweep read it twice a name
    (once there, once for the name's tag)."""
    import app.recommender.bundle as bundle_module

    def unread(pid: int) -> str | None:
        raise AssertionError(f"/proc/{pid}/stat read for nothing")

    monkeypatch.setattr(bundle_module, "process_identity", unread)
    assert process_alive(os.getpid())


def test_a_private_extraction_whose_makers_pid_a_new_process_took_is_removed_once_old(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private extraction's name carried its maker's pid only: in a container restarted by its
    restart policy (``$TMPDIR`` survives in its writable layer) the new workers take the killed
    ones' pids, and a killed worker's extraction, a whole bundle, stayed as long as the process
    given its pid ran (days), after each restart one more. The name carries the maker's start
    time too (:func:`process_tag`): one whose pid runs a process started at another time is removed
    once nothing in it changed for an hour; the living maker's stays, however old."""
    archive, scratch = _archive_with_private_tmp(model_store, tmp_path, monkeypatch)
    _unusable_extraction_cache(scratch)
    long_ago = time.time() - 2 * 3600
    reused = _aged_tree(
        scratch / f"movierec-bundle-{os.getppid()}-{'0' * 12}-k3j_x9q2", long_ago, HALF_EXTRACTED
    )
    living = _aged_tree(
        scratch / f"movierec-bundle-{os.getpid()}-{process_tag(os.getpid())}-k3j_x9q2",
        long_ago,
        HALF_EXTRACTED,
    )
    loaded = load_bundle(archive)
    assert not os.path.lexists(reused) and living.is_dir()
    assert loaded.path.parent.name.startswith(f"movierec-bundle-{os.getpid()}-{process_tag(os.getpid())}-")


def test_seed_style_regressor_pickle_is_served(synthetic_data, tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestRegressor

    from app.recommender.models.forest import seed_features

    rows = synthetic_data.ratings.join(synthetic_data.users.set_index("user_id"), on="user_id")
    features = seed_features(
        rows["age"], rows["gender"].tolist(), rows["occupation"].tolist(), rows["movie_id"]
    )
    estimator = RandomForestRegressor(n_estimators=5, random_state=0).fit(features, rows["rating"])
    path = tmp_path / "model.pkl"
    joblib.dump(estimator, path)
    bundle = load_bundle(path, catalogue_fallback=synthetic_data.items)
    assert len(bundle.recommend_segment(Segment.of(30, "M", "engineer"), 10)) == 10


@pytest.mark.parametrize("damage", ["truncate_table", "bad_manifest", "repeat_movie", "missing_file"])
def test_damaged_bundles_are_refused(model_store: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree((model_store / "latest").resolve(), broken)
    if damage == "truncate_table":
        data = (broken / "segment_top.npy").read_bytes()
        (broken / "segment_top.npy").write_bytes(data[: len(data) // 2])
    elif damage == "bad_manifest":
        (broken / "manifest.json").write_text("{not json")
    elif damage == "repeat_movie":
        top = np.load(broken / "segment_top.npy")
        top[0, 1] = top[0, 0]
        np.save(broken / "segment_top.npy", top)
    else:
        (broken / "catalogue.csv").unlink()
    with pytest.raises(BundleError):
        load_bundle(broken)


def test_a_version_longer_than_the_database_stores_is_refused(model_store: Path, tmp_path: Path) -> None:
    """A 65-character version loaded and served, but PostgreSQL refused every row recording it:
    no id it served could be stored or scored (and the request log stalled behind them)."""
    import json

    from app.recommender.bundle import VERSION_MAX_LENGTH
    from app.storage.models import Feedback, RecommendationRequest

    assert RecommendationRequest.__table__.c.model_version.type.length == VERSION_MAX_LENGTH
    assert Feedback.__table__.c.model_version.type.length == VERSION_MAX_LENGTH
    bundle = tmp_path / "long"
    shutil.copytree((model_store / "latest").resolve(), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = "v" * VERSION_MAX_LENGTH
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(bundle).version == "v" * VERSION_MAX_LENGTH
    manifest["version"] += "v"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version is not 1 to 64 characters"):
        load_bundle(bundle)


def test_point_latest_refuses_unknown_versions(model_store: Path) -> None:
    with pytest.raises(BundleError):
        point_latest(model_store, "no-such-version")


def test_a_pickle_whose_catalogue_lacks_its_movies_is_refused(model_store: Path, tmp_path: Path) -> None:
    """A model.pkl beside a catalogue.csv (or with a data set) that lacks movies the model ranks:
    a BundleError the service reports and keeps its old model for, not a KeyError."""
    bundle_dir = (model_store / "latest").resolve()
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(bundle_dir / "model.pkl", single / "model.pkl")
    catalogue = (bundle_dir / "catalogue.csv").read_text().splitlines()
    (single / "catalogue.csv").write_text("\n".join(catalogue[:-3]) + "\n")
    with pytest.raises(BundleError, match="catalogue"):
        load_bundle(single / "model.pkl")


def test_a_seed_regressor_ranks_the_movies_of_the_catalogue_beside_it(
    model_store: Path, tmp_path: Path
) -> None:
    """ML_MODEL_PATH a seed-style model.pkl (the seed's scikit-learn regressor over age, gender,
    occupation and movie id) with the catalogue.csv of its movies beside it, and no data set: it
    was refused ('a catalogue.csv beside it (or the data set) is needed'), the catalogue beside it
    read only for titles, after the regressor had been given none to rank. It ranks those movies."""
    from sklearn.linear_model import LinearRegression

    from app.recommender.bundle import read_catalogue
    from app.recommender.models.forest import seed_features

    catalogue = read_catalogue((model_store / "latest").resolve() / "catalogue.csv")
    movies = catalogue["movie_id"].to_numpy()
    rows = seed_features(np.full(len(movies), 30), ["F"] * len(movies), ["artist"] * len(movies), movies)
    seed = tmp_path / "seed"
    seed.mkdir()
    ratings = movies / movies.max()  # the higher the id, the better the movie
    joblib.dump(LinearRegression().fit(rows, ratings), seed / "model.pkl")
    catalogue.to_csv(seed / "catalogue.csv", index=False)
    bundle = load_bundle(seed / "model.pkl")
    assert sorted(bundle.catalogue["movie_id"]) == sorted(movies)
    best = catalogue.sort_values("movie_id", ascending=False)["title"].head(5).tolist()
    assert [r.title for r in bundle.recommend_segment(Segment.of(30, "F", "artist"), 5)] == best
    (seed / "catalogue.csv").unlink()  # nothing to rank without it, and no data set: refused as before
    with pytest.raises(BundleError, match=r"is a seed-style regressor; a catalogue\.csv beside it"):
        load_bundle(seed / "model.pkl")


def test_catalogue_titles_pandas_reads_as_missing_round_trip(model_store: Path, tmp_path: Path) -> None:
    """catalogue.csv was read back with pandas' default NA parsing: a movie titled "NA", "None",
    "null", "N/A", "nan" or "" came back NaN (two of them: "titles are not unique", the bundle
    refused). Titles and genres come back as written; a missing year is still missing."""
    words = ["NA", "None", "null", "N/A", "nan", ""]
    bundle = load_bundle(model_store)
    catalogue = bundle.catalogue.copy()
    catalogue.loc[: len(words) - 1, "title"] = words
    catalogue["year"] = catalogue["year"].astype("float64")
    catalogue.loc[len(words), "year"] = np.nan
    model = joblib.load(bundle.path / "model.pkl")
    manifest = {"served_model": bundle.manifest["served_model"]}
    written = write_bundle(tmp_path / "store", model, catalogue, bundle.tables, manifest, {})
    loaded = load_bundle(written)
    assert loaded.catalogue["title"].tolist() == catalogue["title"].tolist()
    assert loaded.catalogue["genres"].tolist() == catalogue["genres"].fillna("").tolist()
    assert loaded.catalogue["year"].isna().tolist() == catalogue["year"].isna().tolist()
    assert loaded.recommend_segment(Segment.of(25, "F", "artist"), 5)
    lone = tmp_path / "lone"  # a model.pkl with the catalogue.csv beside it
    lone.mkdir()
    shutil.copy(written / "model.pkl", lone / "model.pkl")
    shutil.copy(written / "catalogue.csv", lone / "catalogue.csv")
    from_pickle = load_bundle(lone / "model.pkl")
    assert from_pickle.catalogue["title"].tolist() == catalogue["title"].tolist()


def _write_copy(model_store: Path, store: Path) -> Path:
    """``write_bundle`` of the synthetic store's bundle into ``store``."""
    bundle = load_bundle(model_store)
    model = joblib.load(bundle.path / "model.pkl")
    manifest = {"served_model": bundle.manifest["served_model"]}
    return write_bundle(store, model, bundle.catalogue, bundle.tables, manifest, {})


def test_a_write_that_fails_leaves_no_staging_directory(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step of write_bundle that raised (a full disk, a model that does not pickle) left its
    hidden staging directory, with whatever it had written, in the store for ever."""
    import app.recommender.bundle as bundle_module

    store = tmp_path / "store"
    first = _write_copy(model_store, store)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_module.np, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        _write_copy(model_store, store)
    assert sorted(path.name for path in store.iterdir()) == sorted([first.name, "latest"])
    assert (store / "latest").resolve() == first


def test_stale_staging_directories_are_removed_at_the_next_write_fresh_ones_kept(
    model_store: Path, tmp_path: Path
) -> None:
    """A writer killed outright (SIGKILL, OOM, power) runs no cleanup: the next write removes
    its staging directory once nothing has changed in it for an hour. One still being written
    (another writer's) and deploy's hidden directory are left alone."""
    store = tmp_path / "store"
    store.mkdir()
    long_ago = time.time() - 2 * 3600

    def staging(name: str, age: float | None) -> Path:
        directory = store / name
        directory.mkdir(mode=0o700)
        (directory / "model.pkl").write_bytes(b"half")
        if age is not None:
            for path in (directory / "model.pkl", directory):
                os.utime(path, (age, age))
        return directory

    stale = staging(".writing-20260101T000000-abcdef-k3j_x9q2", long_ago)
    busy = staging(".writing-20260101T000001-abcdef-p0o9i8u7", None)
    still_writing = staging(".writing-20260101T000002-abcdef-a1b2c3d4", long_ago)
    os.utime(still_writing / "model.pkl")  # its file was written a moment ago
    deploy = staging(".deploy-abcdefgh", long_ago)
    written = _write_copy(model_store, store)
    assert not stale.exists()
    assert busy.is_dir() and still_writing.is_dir() and deploy.is_dir()
    assert (store / "latest").resolve() == written


def test_stale_leftovers_of_earlier_releases_and_of_latest_swaps_are_removed_too(
    model_store: Path, tmp_path: Path
) -> None:
    """Staging directories under the name earlier releases gave them (``.<version>-<random>``)
    and the temporary links a writer killed while replacing ``latest`` left (``.latest-<pid>-<ns>``)
    were never removed. They are now, by the same rule: this user's, unchanged for an hour."""
    store = tmp_path / "store"
    store.mkdir()
    long_ago = time.time() - 2 * 3600

    def leftover(name: str, age: float | None, link: bool = False) -> Path:
        path = store / name
        if link:
            path.symlink_to("20260101T000000-abcdef")
        else:
            path.mkdir(mode=0o700)
            (path / "model.pkl").write_bytes(b"half")
            if age is not None:
                os.utime(path / "model.pkl", (age, age))
        if age is not None:
            os.utime(path, (age, age), follow_symlinks=False)
        return path

    stale = [
        leftover(".20260101T000000-abcdef-k3j_x9q2", long_ago),
        leftover(".20260101T000000-abcdef-most_liked-a1b2c3d4", long_ago),  # a candidate's version
        leftover(".latest-4242-123456789", long_ago, link=True),
    ]
    kept = [
        leftover(".20260101T000001-abcdef-p0o9i8u7", None),  # another writer's, at work
        leftover(".latest-4243-123456790", None, link=True),  # another process swapping latest now
        leftover(".latest-4244-123456791", long_ago),  # not a link: not point_latest's
    ]
    written = _write_copy(model_store, store)
    assert [path.name for path in stale if os.path.lexists(path)] == []
    assert all(os.path.lexists(path) for path in kept)
    assert (store / "latest").resolve() == written


def _age(path: Path, when: float) -> Path:
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def test_stale_export_staging_and_reload_marker_temp_files_are_removed_at_the_next_write(
    model_store: Path, tmp_path: Path
) -> None:
    """An export (``.export-<version>-<random>``) or a marker write (``.serving.json.<pid>.<tid>.tmp``)
    killed outright left its temporary directory or file in the store for ever. The next write
    removes them by the staging directories' rule: this user's, unchanged for an hour (anywhere
    in the directory's tree). Fresh ones, perhaps a live writer's, and everything else stay."""
    store = tmp_path / "store"
    store.mkdir()
    long_ago = time.time() - 2 * 3600

    def old_file(name: str, age: float = long_ago) -> Path:
        path = store / name
        path.write_text("{}")
        return _age(path, age)

    def old_dir(name: str) -> Path:
        (store / name).mkdir()
        return _age(store / name, long_ago)

    stale_export = store / ".export-20260101T000000-abcdef-abcdefgh"
    (stale_export / "bundle").mkdir(parents=True)
    (stale_export / "bundle" / "model.pkl").write_bytes(b"half")
    for path in (stale_export / "bundle" / "model.pkl", stale_export / "bundle", stale_export):
        _age(path, long_ago)
    busy_export = store / ".export-20260101T000001-abcdef-ijklmnop"
    (busy_export / "bundle").mkdir(parents=True)
    (busy_export / "bundle" / "model.pkl").write_bytes(b"half")  # being downloaded now, two levels down
    for path in (busy_export / "bundle", busy_export):
        _age(path, long_ago)
    stale_marker_tmp = old_file(".serving.json.4242.139872345678912.tmp")
    fresh_marker_tmp = old_file(".serving.json.4243.139872345678913.tmp", time.time())
    others = [
        old_file(".serving.json"),  # the marker itself
        old_file(".serving.json.tmp"),  # not a name the marker write gives
        old_file(".serving.json.4244.1.tmp.bak"),
        old_file(".export-20260101T000002-abcdef-qrstuvwx"),  # a file: not an export's staging
        old_dir(".serving.json.4245.139872345678914.tmp"),  # a directory: not a marker's file
        old_dir(".deploy-abcdefgh"),
        old_file("notes.txt"),
        old_file(".notes"),
    ]
    written = _write_copy(model_store, store)
    assert not os.path.lexists(stale_export) and not os.path.lexists(stale_marker_tmp)
    assert (busy_export / "bundle" / "model.pkl").read_bytes() == b"half" and fresh_marker_tmp.is_file()
    assert [path.name for path in others if not os.path.lexists(path)] == []
    assert (store / "latest").resolve() == written


def test_an_old_archive_s_fresh_extraction_does_not_look_stale_to_a_sibling_s_sweep(
    model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tarfile gives extracted directories their times from the archive, a "./" member the
    staging directory itself: a two-hour-old archive's extraction looked like a dead process's
    leftover to a sibling worker sweeping the cache just before the rename, and the load failed."""
    from app.recommender import bundle as bundle_module

    bundle_dir = (model_store / "latest").resolve()
    archive = tmp_path / "bundle.tar.gz"
    old = time.time() - 2 * 3600
    with tarfile.open(archive, "w:gz") as tar:  # as `tar -C dir -czf bundle.tar.gz .` writes it
        for path in [bundle_dir, *sorted(bundle_dir.rglob("*"))]:
            member = tar.gettarinfo(path, arcname="./" + str(path.relative_to(bundle_dir)).lstrip("."))
            member.mtime = old
            if member.isfile():
                with path.open("rb") as handle:
                    tar.addfile(member, handle)
            else:
                tar.addfile(member)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real_rename = Path.rename

    def sibling_sweeps_first(self: Path, target: Path) -> Path:
        if self.name.startswith(bundle_module.EXTRACTION_STAGING_PREFIX):
            bundle_module.remove_stale_leftovers(self.parent, bundle_module.EXTRACTION_LEFTOVERS)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", sibling_sweeps_first)
    loaded = load_bundle(archive)
    assert loaded.version == load_bundle(bundle_dir).version


def test_feedback_users_get_no_precomputed_lists(synthetic_data, tmp_path: Path) -> None:
    """Each anonymous request that was scored becomes a synthetic feedback user (ingest): they
    train the models, but nobody can be them. Batch inference ranked a top 100 for every one of
    them, so each bundle grew by a row per scored request, without bound, and ``/api/recommend``
    with ``user_id`` 1000001 served a stranger a list made from that person's scores (their
    features are refused for the same reason). Only the raw data's known users get lists."""
    import pandas as pd

    from app.pipeline.ingest import FEEDBACK_USER_BASE, merge_feedback

    stranger = FEEDBACK_USER_BASE + 1
    ratings = pd.DataFrame(
        {"user_id": [stranger, stranger], "movie_id": [1, 2], "rating": [5.0, 4.0], "timestamp": [1, 2]}
    )
    users = pd.DataFrame(
        {"user_id": [stranger], "age": [30], "gender": ["F"], "occupation": ["engineer"], "zip_code": [""]}
    )
    data = merge_feedback(synthetic_data, ratings, users)
    for name in ("ease", "most_liked"):
        model = make_model(name).fit(data.ratings, data.users, data.items)
        tables = build_tables(model, data.ratings)
        assert stranger not in set(tables.user_ids.tolist()), name
        assert set(tables.user_ids.tolist()) == set(synthetic_data.ratings["user_id"].tolist()), name


def test_write_bundle_refuses_tables_of_another_catalogue_and_keeps_its_own_counts(
    model_store: Path, tmp_path: Path
) -> None:
    """Batch inference ranks positions in the model's ``item_ids``; write_bundle stored them beside
    whatever catalogue it was given, so a catalogue in another order (or of other movies) made a
    bundle whose every list named the wrong movies, and a caller's manifest (deploy passes a
    loaded bundle's) overrode the counts it computed, which load_bundle now checks."""
    bundle = load_bundle(model_store)
    model = joblib.load(bundle.path / "model.pkl")
    reordered = bundle.catalogue.iloc[::-1].reset_index(drop=True)
    store = tmp_path / "store"
    with pytest.raises(BundleError, match="catalogue"):
        write_bundle(store, model, reordered, bundle.tables, {"served_model": "x"}, {})
    assert not [p for p in store.iterdir() if p.name != ".gitkeep"] if store.exists() else True

    stale = {"served_model": "x", "n_items": 1, "n_known_users": 7, "table_depth": 3}
    written = load_bundle(write_bundle(store, model, bundle.catalogue, bundle.tables, stale, {}))
    assert written.manifest["n_items"] == len(bundle.catalogue)
    assert written.manifest["table_depth"] == bundle.tables.segment_top.shape[1]
