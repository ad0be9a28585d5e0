"""Operator review (deploy and monitor for real): what an email and a stopping monitor tell the operator."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from app.monitoring.alerts import Alerter, SmtpConnectionError
from tests.unit.test_alerts import Clock, Recorder, err

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_email_footer_names_a_section_that_exists_in_operations_md() -> None:
    recorder = Recorder()
    alerter = Alerter([recorder], group_wait=0, clock=Clock())
    alerter.raise_alert(err("database timeout"))
    [notification] = recorder.sent
    match = re.search(r"docs/operations\.md \(section '([^']+)'\)", notification.body)
    assert match, notification.body
    headings = re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(), re.MULTILINE)
    assert match.group(1) in headings, f"{match.group(1)!r} is not a heading of docs/operations.md"


def test_stopping_with_the_smtp_server_down_says_the_alerts_were_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = SmtpConnectionError("cannot reach SMTP server smtp:25: Connection refused")
    sink = Recorder([down] * 5)
    alerter = Alerter([sink], group_wait=10, clock=Clock())
    alerter.raise_alert(err("database unreachable"))
    alerter.raise_alert(err("slow", kind="log.warning", severity="warning"))
    with caplog.at_level(logging.ERROR, logger="app.monitoring.alerts"):
        alerter.close()
    assert sink.sent == [] and sink.calls == 1  # the server did not answer: not tried again for the other
    [record] = [r for r in caplog.records if r.getMessage() == "alerts not delivered before stopping"]
    assert record.undelivered == 2
    assert sorted(record.kinds) == ["log.error", "log.warning"]
    # still counted as undelivered, so a monitor with --cursor-file resumes before their entries
    assert alerter.oldest_undelivered() == 1


def test_a_journalctl_that_cannot_be_found_is_a_configuration_error_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it used to log in to SMTP, then retry starting the missing program for ever (backoff to
    # 30 s): a monitor that looks alive to systemd, watches nothing and never emails about it
    import threading

    from app.monitoring.monitor import EXIT_CONFIG, main
    from tests.helpers import free_port

    result: list[int] = []
    argv = ["movierec", "127.0.0.1", "ops@example.com", "--no-auth", "--smtp-port", str(free_port()),
            "--journalctl", str(tmp_path / "no-such-journalctl")]  # fmt: skip
    worker = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    worker.start()
    worker.join(timeout=60)  # at once; the bound is for a monitor that never exits
    assert result == [EXIT_CONFIG], "the monitor did not exit with status 2 within 60 s"
    err = capsys.readouterr().err
    assert f"monitor-docker: error: journalctl not found ({tmp_path / 'no-such-journalctl'})" in err
    assert "--journalctl" in err and "Traceback" not in err


@pytest.fixture
def python_3_11_2_tarfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """tarfile as Debian bookworm's python3 (3.11.2, the debootstrap base image) has it: no
    extraction filters (they came in 3.11.4), so ``extractall(filter=...)`` is a TypeError."""
    import tarfile

    original = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):  # type: ignore[no-untyped-def]
        if kwargs:
            raise TypeError(f"TarFile.extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, path, members, numeric_owner=numeric_owner)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    monkeypatch.delattr(tarfile, "data_filter")


def _bundle_archive(model_store: Path, tmp_path: Path, arcname: str, *extra: Any) -> Path:
    """The store's latest bundle as ``tmp_path/bundle.tar.gz`` under ``arcname``, plus ``extra``
    members (TarInfo without a body)."""
    import tarfile

    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add((model_store / "latest").resolve(), arcname=arcname)
        for member in extra:
            tar.addfile(member)
    return archive


def test_a_tar_gz_bundle_loads_on_a_python_without_tarfile_filters(
    python_3_11_2_tarfile: None, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deploy-docker.py movierec 1 bundle.tar.gz ... --base-image <Debian bookworm> failed its
    # image build with "TypeError: TarFile.extractall() got an unexpected keyword argument 'filter'"
    import tempfile

    from app.recommender.bundle import load_bundle

    bundle_dir = (model_store / "latest").resolve()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    archive = _bundle_archive(model_store, tmp_path, bundle_dir.name)
    assert load_bundle(archive).version == load_bundle(bundle_dir).version


@pytest.mark.parametrize("evil", ["../outside.txt", "/tmp/absolute.txt", "bundle/../../outside.txt"])
def test_without_tarfile_filters_members_outside_the_archive_are_refused(
    python_3_11_2_tarfile: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    import io
    import tarfile
    import tempfile

    from app.recommender.bundle import BundleError, load_bundle

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo(evil)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    scratch = tmp_path / "tmp" / "a" / "b"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(BundleError, match="outside"):
        load_bundle(archive)
    assert not list(tmp_path.rglob("outside.txt")) and not Path("/tmp/absolute.txt").exists()


def test_without_tarfile_filters_links_are_left_out(
    python_3_11_2_tarfile: None, model_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile
    import tempfile

    from app.recommender.bundle import load_bundle

    link = tarfile.TarInfo("b/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    loaded = load_bundle(_bundle_archive(model_store, tmp_path, "b", link))
    assert not (loaded.path / "escape").exists() and not (loaded.path / "escape").is_symlink()
