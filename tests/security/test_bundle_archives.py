"""Bundle archives (``ML_MODEL_PATH`` / ``MODEL_FILE`` as a ``.tar.gz``): nothing lands outside
the extraction.

The archive is crafted the way an attacker would, with tarfile directly: a chain of symlinks
whose resolved path outgrows PATH_MAX, so ``os.path.realpath`` — and with it tarfile's "data"
filter — stops resolving and judges the rest of the path lexically (CVE-2025-4517, CPython
gh-135034; open on Python < 3.11.13 / 3.12.11, 3.11.7 here), while the kernel follows it.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from app.recommender.bundle import BundleError, load_bundle

pytestmark = pytest.mark.unit

STEPS = "abcdefghijklmnop"


def _escaping_archive(archive: Path, dest_length: int, outside: Path) -> None:
    """Members that pass the "data" filter on an unpatched Python and write ``outside/pwned``."""
    # the chain (and a manifest.json in it) fits PATH_MAX; one more long name does not
    comp = "d" * min(255, (4095 - dest_length - len("/manifest.json")) // len(STEPS) - 1)
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        path = ""
        for step in STEPS:
            directory = tarfile.TarInfo(os.path.join(path, comp))
            directory.type, directory.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(directory)
            link = tarfile.TarInfo(os.path.join(path, step))
            link.type, link.linkname = tarfile.SYMTYPE, comp
            tar.addfile(link)
            path = os.path.join(path, comp)
        too_long = os.path.join(*STEPS, "l" * 254)  # resolves to the extraction root; realpath gives up
        top = tarfile.TarInfo(too_long)
        top.type, top.linkname = tarfile.SYMTYPE, os.path.join(*[".."] * len(STEPS))
        tar.addfile(top)
        escape = tarfile.TarInfo("escape")
        escape.type, escape.linkname = tarfile.SYMTYPE, too_long + "/.." * len(STEPS) + str(outside)
        tar.addfile(escape)
        data = b"written outside the extraction\n"
        payload = tarfile.TarInfo("escape/pwned")
        payload.size = len(data)
        tar.addfile(payload, io.BytesIO(data))


def test_a_bundle_archive_cannot_write_outside_its_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    outside = tmp_path / "outside"
    outside.mkdir()
    # extracted into <tmp>/movierec-bundles-<uid>/.staging-XXXXXXXX, kept as .../<32 hex digits>
    dest_length = len(str(scratch / f"movierec-bundles-{os.getuid()}" / ("0" * 32)))
    archive = tmp_path / "bundle.tar.gz"
    _escaping_archive(archive, dest_length, outside)
    with pytest.raises(BundleError):
        load_bundle(archive)
    assert list(outside.iterdir()) == [], "a member of the archive was written outside its extraction"
