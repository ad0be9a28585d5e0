"""A ``.tar.gz`` model (``ML_MODEL_PATH``, ``movierec accuracy``, ``tests/run_accuracy_tests.py``)
is extracted to disk: the whole archive is bounded, not only its ``model.pkl``, and nothing of
an archive over the bounds is written. Members that could leave the extraction are refused or
left out, with tarfile's extraction filters and without them (Python < 3.11.4)."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.unit


def _archive(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz of regular files of the given names and sizes (zeros)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    return path


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own $TMPDIR, where extractions go."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def _written(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if not path.is_dir()]


def _accuracy(archive: Path, tmp_path: Path) -> list[str]:
    """``movierec accuracy ARCHIVE test_data.json``: its exit status must be 1; its Error lines."""
    from app.cli import cli

    test_data = tmp_path / "test_data.json"
    test_data.write_text(json.dumps({"data": [[1.0]], "target": [1.0], "expected_score": 0.0}))
    result = CliRunner().invoke(cli, ["accuracy", str(archive), str(test_data)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error: ")]


def test_an_archive_whose_files_sum_over_the_limit_is_refused_before_extraction(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only model.pkl was bounded (1 GiB, read into memory); the archive was extracted whole to
    disk first: many members each under any bound filled $TMPDIR. The sum of the regular
    members' sizes is now bounded, checked from the headers before anything is written."""
    from app.recommender import bundle

    monkeypatch.setattr(bundle, "MAX_ARCHIVE_BYTES", 4096, raising=False)
    archive = _archive(tmp_path / "big.tar.gz", {"model.pkl": 100, "a.bin": 2000, "b.bin": 2000})
    errors = _accuracy(archive, tmp_path)
    assert len(errors) == 1, errors
    assert str(archive) in errors[0] and "4100 bytes" in errors[0] and "4096" in errors[0], errors
    assert not _written(scratch)


def test_an_archive_of_too_many_members_is_refused_before_extraction(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.recommender import bundle

    monkeypatch.setattr(bundle, "MAX_ARCHIVE_MEMBERS", 5, raising=False)
    archive = _archive(tmp_path / "many.tar.gz", {"model.pkl": 10} | {f"f{n}": 1 for n in range(5)})
    errors = _accuracy(archive, tmp_path)
    assert len(errors) == 1, errors
    assert str(archive) in errors[0] and "more than 5 members" in errors[0], errors
    assert not _written(scratch)


def test_the_serving_loader_refuses_an_archive_over_the_limit(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ML_MODEL_PATH naming such an archive: the same refusal, a BundleError (a bad bundle never
    replaces a good one)."""
    from app.recommender import bundle

    monkeypatch.setattr(bundle, "MAX_ARCHIVE_BYTES", 4096, raising=False)
    archive = _archive(tmp_path / "big.tar.gz", {"b/manifest.json": 10, "b/model.pkl": 4087})
    with pytest.raises(bundle.BundleError, match="4097 bytes"):
        bundle.load_bundle(archive)
    assert not _written(scratch)


def test_an_archive_at_the_limit_loads(
    model_store: Path, scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.recommender import bundle

    bundle_dir = (model_store / "latest").resolve()
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle_dir, arcname="b")
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
    monkeypatch.setattr(bundle, "MAX_ARCHIVE_BYTES", sum(m.size for m in members if m.isfile()))
    monkeypatch.setattr(bundle, "MAX_ARCHIVE_MEMBERS", len(members))
    assert bundle.load_bundle(archive).version == bundle.load_bundle(bundle_dir).version


@pytest.fixture(params=["filters", "no filters"])
def tarfile_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """tarfile as this Python has it, and as Debian bookworm's 3.11.2 has it (no extraction filters)."""
    if request.param == "no filters":
        original = tarfile.TarFile.extractall

        def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs:
                raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
        monkeypatch.delattr(tarfile, "data_filter")
    return str(request.param)


@pytest.mark.parametrize("name", ["../outside.txt", "b/../../outside.txt"])
def test_a_member_leaving_the_extraction_is_refused(
    tarfile_kind: str, scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from app.recommender.bundle import BundleError, load_bundle

    deep = scratch / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))  # deep enough for "../.." to stay in tmp_path
    archive = _archive(tmp_path / "evil.tar.gz", {name: 5})
    with pytest.raises(BundleError, match="outside"):
        load_bundle(archive)
    assert not list(tmp_path.rglob("outside.txt"))


def test_links_and_devices_are_left_out(
    tarfile_kind: str, model_store: Path, scratch: Path, tmp_path: Path
) -> None:
    from app.recommender.bundle import load_bundle

    extra = []
    for name, kind, target in [
        ("b/sym", tarfile.SYMTYPE, "/etc/passwd"),
        ("b/hard", tarfile.LNKTYPE, "b/manifest.json"),
        ("b/dev", tarfile.CHRTYPE, ""),
        ("b/fifo", tarfile.FIFOTYPE, ""),
    ]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        extra.append(info)
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add((model_store / "latest").resolve(), arcname="b")
        for info in extra:
            tar.addfile(info)
    loaded = load_bundle(archive)
    for name in ("sym", "hard", "dev", "fifo"):
        assert not (loaded.path / name).exists() and not (loaded.path / name).is_symlink(), name
