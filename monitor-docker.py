#!/usr/bin/env python3
"""Email on ERROR/WARNING entries of a Docker container's journald logs.

Thin wrapper: the logic, and its tests, live in app.monitoring.monitor.
Usage: ./monitor-docker.py CONTAINER_NAME SMTP_SERVER EMAIL [--print] [--smtp-port 25] [--is-secure]
       [--notify-warning]   (password: $MONITOR_SMTP_PASSWORD, --password-file, or a prompt)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.monitoring.monitor import main

if __name__ == "__main__":
    sys.exit(main())
