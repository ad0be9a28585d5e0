"""Secrets given as files: ``<NAME>_FILE`` names a file that holds the value of ``<NAME>``.

The Docker/Kubernetes convention: a secret mounted as a file is not in the container's
configuration (``docker inspect``) nor in any process's environment (``/proc/<pid>/environ``),
where a variable is. One reader for every secret file the service and the monitor take, so a
file means the same everywhere: its content minus one trailing newline (the one ``echo`` or an
editor adds) and a leading UTF-8 byte-order mark (Windows PowerShell's), never empty.

The writers share what makes such a file private (:func:`private_directory`,
:func:`write_secret_file`): deploy-docker.py's per-container files and docker-compose.yml's
(app/compose_secrets.py). Standard library only: ``deploy-docker.py`` imports the table below
to know which variables it delivers as files, and runs where the service's dependencies may not
be installed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

FILE_SUFFIX: Final = "_FILE"

SECRET_SETTINGS: Final[dict[str, tuple[str, ...]]] = {
    "session_password": ("SESSION_PASSWORD", "MOVIEREC_SESSION_PASSWORD"),
    "admin_password": ("ADMIN_PASSWORD", "MOVIEREC_ADMIN_PASSWORD"),
    "jwt_secret": ("MOVIEREC_JWT_SECRET",),
    "metrics_token": ("MOVIEREC_METRICS_TOKEN",),
    # URLs that carry the database's or Redis's password (``postgresql://user:password@host/db``)
    "database_url": ("MOVIEREC_DATABASE_URL",),
    "redis_url": ("MOVIEREC_REDIS_URL",),
    # MLflow's: a database URL, or a server's https://user:password@host
    "mlflow_tracking_uri": ("MOVIEREC_MLFLOW_TRACKING_URI",),
}
"""Each setting that holds (or may hold) a secret and the variables it is read from; each also
as ``<variable>_FILE``."""

SECRET_VARIABLES: Final = frozenset(name for names in SECRET_SETTINGS.values() for name in names)


class SecretFileError(RuntimeError):
    """A configured secret file cannot be used; the message names the variable and the file."""


def read_secret_file(path: str | os.PathLike[str], variable: str) -> str:
    """The secret in ``path`` (named by ``variable``, for the error): one trailing ``\\n`` or
    ``\\r\\n`` removed, and a leading UTF-8 byte-order mark (Windows PowerShell's ``-Encoding
    UTF8`` writes one, and it was read as the secret's first character), nothing else (spaces
    may be part of a password). Empty is an error."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except OSError as exc:
        raise SecretFileError(f"{variable}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{variable}: {path} is not UTF-8 text") from None
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            text = text[: -len(ending)]
            break
    if not text:
        raise SecretFileError(f"{variable}: {path} is empty")
    return text


def private_directory(path: Path) -> bool:
    """Make ``path`` a directory only this user may enter (created 0700 when missing, set to 0700
    when not); False, and nothing changed, when it is not a directory of this user (a link, a
    file, another user's): the caller refuses it, naming its option."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    path.chmod(0o700)
    return True


def write_secret_file(path: Path, value: str) -> None:
    """A new file (never an existing one, nor through a link) with ``value`` and the trailing
    newline :func:`read_secret_file` strips, mode 0600: the caller gives it its final mode.

    A value that is not UTF-8 text (a Latin-1 variable, which Python reads with lone surrogates)
    is a :class:`SecretFileError` naming the file, and no file is created: it was a
    UnicodeEncodeError traceback after the file was, and the empty file was then kept."""
    try:
        data = (value + "\n").encode()
    except UnicodeEncodeError:
        raise SecretFileError(f"the value for {path.name} is not UTF-8 text: set it as UTF-8") from None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
