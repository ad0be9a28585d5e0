"""app/compose_secrets.py: the secret files docker-compose.yml mounts, written once, private."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.compose_secrets import SECRET_NAMES, ComposeSecretsError, main, write_compose_secrets
from app.secret_files import read_secret_file

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_is_written_random_private_and_readable_by_the_containers_user(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    assert write_compose_secrets(directory, {}) == dict.fromkeys(SECRET_NAMES, True)
    assert _mode(directory) == 0o700
    values = {}
    for name in SECRET_NAMES:
        path = directory / name
        assert _mode(path) == 0o444  # bind-mounted: the container's user is not the file's owner
        values[name] = read_secret_file(path, name)
        assert path.read_text().endswith("\n")
    assert len(values["jwt_secret"]) >= 32 and len(values["admin_password"]) >= 12
    assert len(set(values.values())) == len(values)
    url = urlsplit(values["database_url"])
    assert (url.scheme, url.username, url.hostname, url.port, url.path) == (
        "postgresql", "movierec", "postgres", 5432, "/movierec",
    )  # fmt: skip
    assert url.password == values["postgres_password"]
    other = tmp_path / "other"
    write_compose_secrets(other, {})
    assert read_secret_file(other / "jwt_secret", "x") != values["jwt_secret"]


def test_existing_files_are_kept_and_missing_ones_added(tmp_path: Path) -> None:
    write_compose_secrets(tmp_path, {})
    before = {name: (tmp_path / name).read_text() for name in SECRET_NAMES}
    (tmp_path / "session_password").chmod(0o600)
    (tmp_path / "session_password").unlink()
    (tmp_path / "database_url").unlink()
    written = write_compose_secrets(tmp_path, {"MOVIEREC_JWT_SECRET": "ignored: the file exists"})
    assert {name for name, fresh in written.items() if fresh} == {"session_password", "database_url"}
    assert (tmp_path / "jwt_secret").read_text() == before["jwt_secret"]
    assert (tmp_path / "database_url").read_text() == before["database_url"]  # from the kept password
    assert (tmp_path / "session_password").read_text() != before["session_password"]


def test_values_of_an_earlier_env_file_are_taken_from_the_environment(tmp_path: Path) -> None:
    environ = {
        "SESSION_PASSWORD": "session pw",
        "MOVIEREC_ADMIN_PASSWORD": "admin-password-1",
        "MOVIEREC_JWT_SECRET": "j" * 40,
        "POSTGRES_PASSWORD": "p@ss/word",  # the volume's password, from before
    }
    write_compose_secrets(tmp_path, environ)
    assert read_secret_file(tmp_path / "session_password", "x") == "session pw"
    assert read_secret_file(tmp_path / "admin_password", "x") == "admin-password-1"
    assert read_secret_file(tmp_path / "jwt_secret", "x") == "j" * 40
    url = read_secret_file(tmp_path / "database_url", "x")
    assert url == "postgresql://movierec:p%40ss%2Fword@postgres:5432/movierec"


def test_a_value_with_a_line_break_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ComposeSecretsError, match="session_password"):
        write_compose_secrets(tmp_path / "s", {"SESSION_PASSWORD": "a\nb"})


def test_the_directory_is_made_private_again(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    write_compose_secrets(directory, {})
    assert _mode(directory) == 0o700


def test_a_directory_that_is_a_link_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert main(["--dir", str(tmp_path / "link")], {}) == 1
    assert "must be a directory of yours" in capsys.readouterr().err
    assert list(target.iterdir()) == []


def test_the_command_prints_no_value_and_uses_movierec_secrets_dir(tmp_path: Path) -> None:
    directory = tmp_path / "compose"
    env = {**os.environ, "MOVIEREC_SECRETS_DIR": str(directory), "SESSION_PASSWORD": "printed-nowhere"}
    command = [sys.executable, "-m", "app.compose_secrets"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "wrote" in first.stdout and "session_password" in first.stdout
    values = [read_secret_file(directory / name, name) for name in SECRET_NAMES]
    assert not any(value in first.stdout + first.stderr for value in values)
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert again.stdout.startswith("kept ") and "wrote" not in again.stdout


def test_a_value_that_is_not_utf8_is_refused_naming_it_and_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``.env`` in Latin-1 (``SESSION_PASSWORD=café``): Python reads the byte as a lone
    surrogate, and writing it raised UnicodeEncodeError, a traceback, after the file had been
    created: the empty file was then kept by every later run, and the service refused it."""
    directory = tmp_path / "s"
    assert main(["--dir", str(directory)], {"SESSION_PASSWORD": "caf\udce9"}) == 1
    error = capsys.readouterr().err
    assert "session_password" in error and "UTF-8" in error and "Traceback" not in error
    assert not (directory / "session_password").exists()
    assert main(["--dir", str(directory)], {"SESSION_PASSWORD": "café"}) == 0
    assert read_secret_file(directory / "session_password", "x") == "café"
