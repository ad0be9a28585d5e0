"""The ml-100k loader: both layouts give the same tables; twins merge; failures name every source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.recommender.data import DataUnavailableError, detect_layout, fetch, find_local, load_directory
from tests.synthetic import (
    TWIN_IDS,
    make_tables,
    partial_data_root,
    spoil_a_rating,
    write_grouplens,
    write_recbole,
)

pytestmark = pytest.mark.unit


def test_both_layouts_load_to_identical_tables(tmp_path: Path) -> None:
    grouplens = load_directory(write_grouplens(tmp_path / "gl"))
    recbole = load_directory(write_recbole(tmp_path / "rb"))
    assert detect_layout(tmp_path / "gl") == "grouplens"
    assert detect_layout(tmp_path / "rb") == "recbole"
    for name in ("ratings", "users"):
        left, right = getattr(grouplens, name), getattr(recbole, name)
        assert left.reset_index(drop=True).equals(right.reset_index(drop=True)), name
    assert grouplens.items["title"].tolist() == recbole.items["title"].tolist()
    assert grouplens.items["genres"].tolist() == recbole.items["genres"].tolist()
    assert grouplens.fingerprint() == recbole.fingerprint()


def test_twins_are_merged_into_one_movie_with_combined_ratings(tmp_path: Path) -> None:
    raw = make_tables()
    data = load_directory(write_grouplens(tmp_path))
    keep, drop = TWIN_IDS
    assert keep in set(data.items["movie_id"]) and drop not in set(data.items["movie_id"])
    assert data.items["title"].is_unique
    assert data.items.loc[data.items["movie_id"] == keep, "title"].item() == "Twin Movie (1995)"
    raw_twin_raters = {u for u, m, _r, _t in raw["ratings"] if m in TWIN_IDS}
    merged = data.ratings[data.ratings["movie_id"] == keep]
    assert set(merged["user_id"]) == raw_twin_raters
    assert not data.ratings.duplicated(["user_id", "movie_id"]).any()
    assert len(data.items) == len(raw["movies"]) - 1


def test_titles_carry_the_year_like_grouplens(tmp_path: Path) -> None:
    data = load_directory(write_recbole(tmp_path))
    assert data.items.loc[data.items["movie_id"] == 1, "title"].item() == "Movie 1 (1981)"


def test_fetch_uses_a_local_directory_and_caches_it(tmp_path: Path) -> None:
    source = write_recbole(tmp_path / "source")
    cached = fetch(tmp_path / "root", sources=[str(source)])
    assert cached == tmp_path / "root" / "ml-100k" and detect_layout(cached) == "recbole"
    # a second fetch uses the cache even when no source works
    assert fetch(tmp_path / "root", sources=[str(tmp_path / "missing")]) == cached
    assert find_local(tmp_path / "root") is not None


def test_a_first_fetch_says_it_fetched_not_that_it_found_a_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new user's first `make run` logged "ml-100k cached" for the download it had just made,
    which reads as "it was already there". The line now says what happened: fetched, from
    where, into where."""
    import logging

    source = write_recbole(tmp_path / "source")
    with caplog.at_level(logging.INFO, logger="app.recommender.data"):
        target = fetch(tmp_path / "root", sources=[str(source)])
    assert [r.getMessage() for r in caplog.records] == [f"fetched ml-100k from {source} into {target}"]


def test_fetch_failure_names_every_source_tried(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as excinfo:
        fetch(tmp_path / "root", sources=[str(tmp_path / "nowhere"), str(tmp_path / "elsewhere")])
    message = str(excinfo.value)
    assert "nowhere" in message and "elsewhere" in message and "--source PATH" in message
    assert not (tmp_path / "root" / "ml-100k").exists()


def test_find_local_never_fetches(tmp_path: Path) -> None:
    assert find_local(tmp_path) is None


def test_a_directory_without_data_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match=r"u\.data"):
        load_directory(tmp_path)


def test_titles_pandas_reads_as_missing_are_kept_as_written(tmp_path: Path) -> None:
    """pandas' default NA parsing read a movie titled "NA", "None", "null", "N/A", "nan" or "#N/A"
    as missing, and the loader named it "unknown": six films became one ("unknown", merged as
    twins) with their ratings combined. An empty title is still "unknown", as before."""
    words = ["NA", "None", "null", "N/A", "nan", "#N/A"]
    directory = write_grouplens(tmp_path)
    path = directory / "u.item"
    lines = path.read_text(encoding="latin-1").splitlines(keepends=True)
    renamed: dict[int, str] = {}
    for index, title in enumerate([*words, ""]):
        fields = lines[index].split("|")
        fields[1] = title
        lines[index] = "|".join(fields)
        renamed[int(fields[0])] = title or "unknown"
    assert not set(renamed) & set(TWIN_IDS)
    path.write_text("".join(lines), encoding="latin-1")
    items = load_directory(directory).items
    titles = dict(zip(items["movie_id"].tolist(), items["title"].tolist(), strict=True))
    assert {movie: titles.get(movie) for movie in renamed} == renamed


class _Killed(BaseException):
    """What stops a process partway (SIGKILL; a second Ctrl-C): no ``except Exception`` sees it."""


def test_a_fetch_publishes_with_one_rename_never_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetch staged in the system temp directory and moved the result into the data root; across
    filesystems that move is a copy, and a SIGKILL (or a second Ctrl-C) partway left a partial
    ``ml-100k`` that the next fetch took as the cache. Publishing is now one rename within the data
    root: nothing is copied into the cache, so no interruption leaves part of one."""
    import errno
    import os
    import shutil

    source = write_grouplens(tmp_path / "source")
    root = tmp_path / "root"
    target = root / "ml-100k"
    real_rename, real_copy = os.rename, shutil.copyfile
    published: list[str] = []

    def rename(src: str, dst: str, *args: object, **kwargs: object) -> None:
        if not Path(src).is_relative_to(root):  # the system temp directory: another filesystem
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    def copy(src: str, dst: str, *args: object, **kwargs: object) -> object:
        if Path(dst).is_relative_to(target):
            published.append(str(dst))
            if len(published) > 1:  # the second file into the cache: a second Ctrl-C, or SIGKILL
                raise _Killed
        return real_copy(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copy)
    try:
        fetch(root, sources=[str(source)])
    except _Killed:
        pytest.fail(f"killed while copying into the cache, which now holds {sorted(os.listdir(target))}")
    assert not published, published
    assert detect_layout(target) == "grouplens" and load_directory(target).ratings.shape[0] > 0


def test_a_killed_fetchs_staging_is_ignored_then_removed(tmp_path: Path) -> None:
    """A fetch killed outright leaves its staging directory in the data root: it is never taken for
    the cache (it is not ``ml-100k``), and once stale a later fetch removes it."""
    import os
    import time

    from app.recommender.bundle import STALE_STAGING_SECONDS
    from app.recommender.data import STAGING_PREFIX

    root = tmp_path / "root"
    stale = write_grouplens(root / f"{STAGING_PREFIX}abcd_123")
    (stale / "u.user").write_text("1|2")  # a half-written file of a killed fetch
    fresh = write_grouplens(root / f"{STAGING_PREFIX}efgh_456")  # another fetch, still at work
    old = time.time() - STALE_STAGING_SECONDS - 60
    for path in (stale, *stale.iterdir()):
        os.utime(path, (old, old))
    assert find_local(root) is None
    cached = fetch(root, sources=[str(write_recbole(tmp_path / "source"))])
    assert detect_layout(cached) == "recbole"
    assert not stale.exists() and fresh.exists()
    assert sorted(path.name for path in root.iterdir()) == sorted(["ml-100k", fresh.name])


def test_a_partial_cache_is_replaced_whole(tmp_path: Path) -> None:
    """A partial ``ml-100k`` (an earlier release's interrupted copy: one file of three) is replaced
    by the complete fetch, and nothing of the partial one or of the staging stays behind."""
    root = tmp_path / "root"
    (root / "ml-100k").mkdir(parents=True)
    (root / "ml-100k" / "u.data").write_text("1\t1\t5\t8")
    cached = fetch(root, sources=[str(write_recbole(tmp_path / "source"))])
    assert detect_layout(cached) == "recbole" and not (cached / "u.data").exists()
    assert [path.name for path in root.iterdir()] == ["ml-100k"]


def test_data_fetch_names_a_cache_that_does_not_load_and_what_to_do(tmp_path: Path) -> None:
    """An ``ml-100k`` cut short by an earlier release's interrupted fetch (or edited by hand) has
    every file, so fetch keeps it; ``movierec data fetch`` then died with a DataFormatError
    traceback. It is one Error: line naming the directory and saying to remove it."""
    from click.testing import CliRunner

    from app.cli import cli

    cache = write_grouplens(tmp_path / "root" / "ml-100k")
    text = (cache / "u.user").read_text(encoding="latin-1")
    (cache / "u.user").write_text(text[: len(text) // 2 - 3], encoding="latin-1")
    result = CliRunner().invoke(cli, ["data", "fetch", "--data-dir", str(tmp_path / "root")])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.output.startswith(f"Error: {cache}: u.user: "), result.output
    assert f"remove {cache} and run movierec data fetch again" in result.output


def test_data_fetch_does_not_say_to_remove_a_data_root_holding_your_own_files(
    tmp_path: Path, no_download: None
) -> None:
    """A malformed file in a data root that holds the files itself got the cache's advice: "remove
    <data root> and run movierec data fetch again", that is delete your own files (and whatever
    else is there), after which the public ml-100k is fetched in their place. It names the file
    and what is wrong, as `train` does, and nothing more."""
    from click.testing import CliRunner

    from app.cli import cli

    root = write_grouplens(tmp_path / "root")
    refusal = spoil_a_rating(root)
    result = CliRunner().invoke(cli, ["data", "fetch", "--data-dir", str(root)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: {root}: {refusal}"), line
    assert "remove" not in line and "fetch again" not in line, line


def test_a_data_root_that_cannot_hold_the_cache_is_refused_not_a_traceback(tmp_path: Path) -> None:
    """Staging beside the cache made the data root at the start of the fetch, outside the
    per-source error handling: a --data-dir that is a file (or under one) escaped as
    FileExistsError's traceback from `data fetch`, `train` and `evaluate`."""
    from click.testing import CliRunner

    from app.cli import cli

    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    source = write_grouplens(tmp_path / "source")
    for data_dir in (a_file, a_file / "under"):
        with pytest.raises(DataUnavailableError, match="cannot hold"):
            fetch(data_dir, (str(source),))
    result = CliRunner().invoke(cli, ["data", "fetch", "--data-dir", str(a_file), "--source", str(source)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert [line for line in result.output.splitlines() if line.startswith("Error: ")], result.output


def test_a_fetch_killed_during_pip_download_leaves_nothing_in_the_temp_directory(tmp_path: Path) -> None:
    """``pip download`` wrote into a TemporaryDirectory of the system temp directory: a fetch
    killed outright meanwhile (SIGKILL, OOM) left it there for good, wheel and all. The download
    (and pip's own temporary files) now go under the staging directory beside the cache, which the
    next fetch removes once stale."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    from app.recommender.bundle import STALE_STAGING_SECONDS
    from app.recommender.data import STAGING_PREFIX

    root, system_tmp = tmp_path / "root", tmp_path / "tmp"
    system_tmp.mkdir()
    child = textwrap.dedent(f"""
        import os, signal, sys, tempfile
        from pathlib import Path
        from app.recommender import data

        def killed_during_download(command, **kwargs):
            dest = Path(command[command.index("--dest") + 1])
            (dest / "recbole-1.2.1-py3-none-any.whl.part").write_bytes(b"partial")
            pip_tmp = Path((kwargs.get("env") or os.environ).get("TMPDIR", tempfile.gettempdir()))
            (pip_tmp / "pip-unpack-x").mkdir()
            os.kill(os.getpid(), signal.SIGKILL)

        data.subprocess.run = killed_during_download
        data.fetch({str(root)!r}, sources=["pypi"])
    """)
    env = {**os.environ, "TMPDIR": str(system_tmp), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert list(system_tmp.iterdir()) == []
    leftovers = list(root.iterdir())
    assert [p.name.startswith(STAGING_PREFIX) for p in leftovers] == [True], leftovers
    old = time.time() - STALE_STAGING_SECONDS - 60
    for path in [leftovers[0], *leftovers[0].rglob("*")]:
        os.utime(path, (old, old))
    fetch(root, sources=[str(write_recbole(tmp_path / "source"))])
    assert [path.name for path in root.iterdir()] == ["ml-100k"]


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch's network sources fail the test: the case under test must not download ml-100k."""
    _network_sources_raise(monkeypatch, AssertionError("downloaded although the data set is there"))


def _network_sources_raise(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """fetch's network sources (PyPI, GroupLens) raise ``error`` instead of downloading."""
    import app.recommender.data as data_module

    def raising(_target: Path, *_args: object) -> None:
        raise type(error)(*error.args)  # a new one each time, as a real failure

    monkeypatch.setattr(data_module, "_from_pypi", raising)
    monkeypatch.setattr(data_module, "_from_grouplens", raising)


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
@pytest.mark.parametrize("where", ["cache", "data dir"])
def test_a_layout_file_that_is_not_a_file_is_named_not_fetched(
    tmp_path: Path, no_download: None, kind: str, where: str
) -> None:
    """Every name of a layout present but one not a regular file (a directory named ``u.data``, a
    dangling symlink) was taken for "no data set": ``data fetch``, ``train`` and ``features build``
    went off to download ml-100k and ended in "could not obtain ml-100k". It is one error line
    naming that path, and nothing is downloaded."""
    from click.testing import CliRunner

    from app.cli import cli

    root = tmp_path / "root"
    directory = write_grouplens(root / "ml-100k" if where == "cache" else root)
    broken = directory / "u.data"
    broken.unlink()
    if kind == "directory":
        broken.mkdir()
    else:
        broken.symlink_to(tmp_path / "unmounted" / "u.data")
    with pytest.raises(DataUnavailableError, match="not a readable file") as excinfo:
        detect_layout(directory)
    assert str(broken) in str(excinfo.value) and kind.split()[-1] in str(excinfo.value)
    for command in (["data", "fetch"], ["train"]):
        result = CliRunner().invoke(cli, [*command, "--data-dir", str(root)])
        assert result.exit_code == 1, result.output
        assert f"Error: {broken}: not a readable file" in result.output, result.output
        assert "could not obtain" not in result.output
    assert not (root / "ml-100k").exists() or where == "cache"


@pytest.mark.parametrize("how", ["missing", "misnamed"])
@pytest.mark.parametrize("layout", ["grouplens", "recbole"])
def test_a_partial_layout_in_the_data_dir_is_refused_naming_found_and_missing(
    tmp_path: Path, no_download: None, layout: str, how: str
) -> None:
    """A data root with some of a layout's files but not all (an export with ``u.item`` missing or
    misnamed) was "no data set": ``data fetch``, ``train`` and ``features build`` fetched or reused
    the public ml-100k in ``<data dir>/ml-100k`` and built from it, without a word. It is one
    ``Error:`` line naming the directory, the files found and the files missing (exit 1), and
    nothing is trained or fetched. Given as a ``--source``, it was "not an ml-100k directory"."""
    from click.testing import CliRunner

    from app.cli import cli

    root = tmp_path / "root"
    expected = partial_data_root(root, layout, how)
    with pytest.raises(DataUnavailableError) as excinfo:
        detect_layout(root)
    assert str(excinfo.value).startswith(expected), excinfo.value
    with pytest.raises(DataUnavailableError, match=re.escape(expected)):
        find_local(root)
    with pytest.raises(DataUnavailableError, match=re.escape(f"tried {root}: {expected}. Put ")):
        fetch(tmp_path / "elsewhere", sources=[str(root)])  # as a --source: what it lacks, nothing more
    model = tmp_path / "model"
    commands = (["data", "fetch"], ["train", "--model-dir", str(model)], ["evaluate", "--out", str(model)])
    for command in commands:
        result = CliRunner().invoke(cli, [*command, "--data-dir", str(root)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        [line] = result.output.splitlines()
        assert line.startswith(f"Error: {expected}"), line
    assert not model.exists()


def test_the_pipeline_refuses_a_partial_data_dir_before_it_builds_anything(
    tmp_path: Path, no_download: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's ingest refuses it too: ``features build`` with one ``Error:`` line and no
    snapshot, the scheduler's fingerprint with the message whole (no traceback at every tick), and
    ``pipeline run`` before it starts the flow (which met it in its first step, in a traceback)."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    import app.pipeline.runner as runner
    from app.cli import cli
    from app.pipeline.schedule import FingerprintError, current_fingerprint
    from tests.helpers import flow_settings

    root = tmp_path / "root"
    expected = partial_data_root(root, "grouplens", "missing")
    features = tmp_path / "features"
    settings = flow_settings(tmp_path).model_copy(update={"data_dir": root, "features_root": str(features)})
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, ["features", "build"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"Error: {expected}" in result.output, result.output  # after the database's log lines
    assert not (features / "LATEST").exists()
    with pytest.raises(FingerprintError, match=re.escape(expected)):
        current_fingerprint(settings)
    monkeypatch.setattr(runner, "_run", lambda *_a, **_k: pytest.fail("the flow was started"))
    with pytest.raises(runner.PipelineError, match=re.escape(expected)):
        runner.run_flow(settings)


def test_the_cache_and_unrelated_files_in_the_data_dir_are_no_partial_layout(tmp_path: Path) -> None:
    """The refusal above is for the layouts' own names: the ml-100k cache, a features store, a
    fetch's staging directory and GroupLens' other files (u.genre, u.info) leave the cache in use."""
    from app.recommender.data import STAGING_PREFIX

    root = tmp_path / "root"
    cached = load_directory(write_recbole(root / "ml-100k"))
    for name in ("features", f"{STAGING_PREFIX}abcd_123"):
        (root / name).mkdir()
    for name in ("u.genre", "u.info", "ml-100k.zip", "README"):
        (root / name).write_text("x")
    assert detect_layout(root) is None
    found = find_local(root)
    assert found is not None and found.fingerprint() == cached.fingerprint()


def test_data_fetch_uses_a_data_root_that_holds_the_files(tmp_path: Path, no_download: None) -> None:
    """``data fetch`` looked at the cache alone, so a data root holding the files (which train and
    features build load) still sent it to download ml-100k; it uses them as they do."""
    from click.testing import CliRunner

    from app.cli import cli

    root = write_grouplens(tmp_path / "root")
    result = CliRunner().invoke(cli, ["data", "fetch", "--data-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{root}: ") and not (root / "ml-100k").exists()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """fetch's network sources fail at once, as on a machine that reaches neither PyPI nor GroupLens."""
    _network_sources_raise(monkeypatch, OSError("Network is unreachable"))


@pytest.mark.parametrize(
    ("sources", "status"),
    [
        ([], 3),  # pypi, then grouplens: neither reached
        (["nowhere"], 3),  # a path that is no copy of ml-100k: nothing to refuse
        (["grouplens", "malformed"], 1),  # the user's own copy refused
        (["malformed", "nowhere"], 1),
    ],
)
def test_data_fetch_exits_3_only_when_no_source_provided_the_files(
    tmp_path: Path, offline: None, sources: list[str], status: int
) -> None:
    """`make data` printed its hint for taking ml-100k from a copy (DATA_SOURCE) after every
    failure of `data fetch`, a data directory or a copy refused for its content included, where
    the hint does not help. `data fetch` exits 3 when ml-100k could not be obtained (every source
    failed to provide the files, none was refused), 1 when data was refused, as before."""
    from click.testing import CliRunner

    from app.cli import cli

    malformed = write_grouplens(tmp_path / "malformed")
    refusal = spoil_a_rating(malformed)
    paths = {"malformed": str(malformed), "nowhere": str(tmp_path / "nowhere")}
    options = [arg for source in sources for arg in ("--source", paths.get(source, source))]
    result = CliRunner().invoke(cli, ["data", "fetch", "--data-dir", str(tmp_path / "root"), *options])
    assert result.exit_code == status and isinstance(result.exception, SystemExit), result.output
    [line] = result.output.splitlines()
    assert line.startswith("Error: could not obtain MovieLens ml-100k; tried "), line
    assert (refusal in line) == ("malformed" in sources), line
    assert not (tmp_path / "root" / "ml-100k").exists()
