#!/usr/bin/env python3
"""Email on ERROR/WARNING entries of a Docker container's journald logs.

Thin wrapper: the logic, and its tests, live in app.monitoring.monitor.
Usage: ./monitor-docker.py CONTAINER_NAME SMTP_SERVER EMAIL [--print] [--smtp-port 25] [--is-secure]
       [--notify-warning]   (password: $MONITOR_SMTP_PASSWORD, --password-file, or a prompt)
"""

import sys
from pathlib import Path

# The host's python3 runs it, standard library only: one older than it needs is one line
# (exit 2: a configuration problem), not a traceback from inside the import (app/monitoring/logs.py's
# scrubber uses atomic groups).
if sys.version_info < (3, 11):  # noqa: UP036 - pyproject.toml's floor binds the package, not the host
    print(
        f"monitor-docker.py: needs Python 3.11 or newer, and this python3 is "
        f"{'.'.join(map(str, sys.version_info[:3]))}: "
        "run it with a newer one (python3.11 monitor-docker.py …)",
        file=sys.stderr,
    )
    sys.exit(2)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.monitoring.monitor import main

if __name__ == "__main__":
    sys.exit(main())
