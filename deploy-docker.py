#!/usr/bin/env python3
"""Build the API image (accuracy test inside), run it and wait until it is healthy.

Thin wrapper: the logic, and its tests, live in app.deploy.
Usage: ./deploy-docker.py IMAGE_NAME IMAGE_VERSION MODEL_FILE TEST_DATA_FILE [SESSION_PASSWORD]
       [--container-name NAME] [--port-mapping [IP:]PORT] [--json-log] [--log-tag TAG]
       (password: $SESSION_PASSWORD or a prompt; the positional is kept for compatibility)
"""

import sys
from pathlib import Path

# The host's python3 runs it, standard library only: one older than it needs is one line
# (exit 2: a configuration problem), not a traceback from inside the import (app/deploy.py evaluates
# `X | None` at import).
if sys.version_info < (3, 10):  # noqa: UP036 - pyproject.toml's floor binds the package, not the host
    print(
        f"deploy-docker.py: needs Python 3.10 or newer, and this python3 is "
        f"{'.'.join(map(str, sys.version_info[:3]))}: "
        "run it with a newer one (python3.11 deploy-docker.py …)",
        file=sys.stderr,
    )
    sys.exit(2)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.deploy import main

if __name__ == "__main__":
    sys.exit(main())
