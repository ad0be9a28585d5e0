"""The secret files docker-compose.yml mounts: ``python3 -m app.compose_secrets`` (``make compose-secrets``).

Compose gives each container its secrets as read-only files under ``/run/secrets`` and only
their paths as ``<NAME>_FILE`` variables (app/secret_files.py), so no secret is in a
container's configuration (``docker inspect``) or in a process's environment. This writes
those files once into ``secrets/`` (``--dir``, or ``MOVIEREC_SECRETS_DIR``, which
docker-compose.yml reads too): random values, or the value of the variable of the same secret
when it is set (moving from a ``.env`` of earlier versions: the PostgreSQL volume keeps the
password it was created with). A file that exists is kept: run it again to add missing ones.

The directory is 0700, so no other user of this machine can reach the files; the files are
0444, because Compose bind-mounts each one into its container, where the service's own user
(not the file's owner on the host) must read it. No value is printed or passed on a command line.

Standard library only: it runs before anything is installed, as deploy-docker.py does.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import quote

from app.secret_files import SecretFileError, private_directory, read_secret_file, write_secret_file

DIR_VARIABLE: Final = "MOVIEREC_SECRETS_DIR"
DEFAULT_DIR: Final = "secrets"

RANDOM_SECRETS: Final[dict[str, tuple[str, int]]] = {
    "session_password": ("SESSION_PASSWORD", 12),
    "admin_password": ("MOVIEREC_ADMIN_PASSWORD", 16),
    "jwt_secret": ("MOVIEREC_JWT_SECRET", 48),
    "postgres_password": ("POSTGRES_PASSWORD", 24),
}
"""Each file, the variable whose value it takes when set, and the random bytes it gets otherwise."""

DATABASE_URL: Final = "database_url"
"""The file with the services' database URL, made from ``postgres_password``: the two always agree."""
DATABASE_URL_TEMPLATE: Final = "postgresql://movierec:{password}@postgres:5432/movierec"

SECRET_NAMES: Final = (*RANDOM_SECRETS, DATABASE_URL)
"""Every file this writes: the secrets docker-compose.yml declares."""


class ComposeSecretsError(RuntimeError):
    """The secrets directory cannot be used; the message says why."""


def _write(path: Path, value: str) -> None:
    if not value or any(char in value for char in "\r\n\0"):
        raise ComposeSecretsError(f"the value for {path.name} is empty or holds a line break")
    try:
        write_secret_file(path, value)
    except SecretFileError as exc:
        raise ComposeSecretsError(str(exc)) from None
    path.chmod(0o444)  # the container's user reads it through the bind mount; the directory is 0700


def write_compose_secrets(directory: Path, environ: Mapping[str, str]) -> dict[str, bool]:
    """Write every missing secret file into ``directory``; for each name, whether it was written
    (False: it existed and was kept)."""
    if not private_directory(directory):
        raise ComposeSecretsError(f"{directory} must be a directory of yours (--dir to choose another)")
    written: dict[str, bool] = {}
    for name, (variable, size) in RANDOM_SECRETS.items():
        path = directory / name
        written[name] = not path.exists()
        if written[name]:
            _write(path, environ.get(variable) or secrets.token_urlsafe(size))
    url = directory / DATABASE_URL
    written[DATABASE_URL] = not url.exists()
    if written[DATABASE_URL]:
        try:
            password = read_secret_file(directory / "postgres_password", "postgres_password")
        except SecretFileError as exc:
            raise ComposeSecretsError(str(exc)) from None
        _write(url, DATABASE_URL_TEMPLATE.format(password=quote(password, safe="")))
    return written


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python3 -m app.compose_secrets",
        description="Write the secret files docker-compose.yml mounts (once; existing files are kept).",
        epilog="A secret's value is taken from SESSION_PASSWORD, MOVIEREC_ADMIN_PASSWORD, "
        "MOVIEREC_JWT_SECRET or POSTGRES_PASSWORD when set, else random.",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(environ.get(DIR_VARIABLE) or DEFAULT_DIR),
        help=f"where to write them (default: ${DIR_VARIABLE} or ./{DEFAULT_DIR}, as docker-compose.yml)",
    )
    args = parser.parse_args(argv)
    try:
        written = write_compose_secrets(args.dir, environ)
    except (ComposeSecretsError, OSError) as exc:
        print(f"compose-secrets: {exc}", file=sys.stderr)
        return 1
    new = [name for name, fresh in written.items() if fresh]
    kept = [name for name, fresh in written.items() if not fresh]
    if new:
        print(f"wrote {', '.join(new)} in {args.dir} (directory 0700)")
    if kept:
        print(f"kept {', '.join(kept)} in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
