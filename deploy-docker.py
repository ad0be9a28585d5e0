#!/usr/bin/env python3
"""Build the API image (accuracy test inside), run it and wait until it is healthy.

Thin wrapper: the logic, and its tests, live in app.deploy.
Usage: ./deploy-docker.py IMAGE_NAME IMAGE_VERSION MODEL_FILE TEST_DATA_FILE [SESSION_PASSWORD]
       [--container-name NAME] [--port-mapping [IP:]PORT] [--json-log] [--log-tag TAG]
       (password: $SESSION_PASSWORD or a prompt; the positional is kept for compatibility)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.deploy import main

if __name__ == "__main__":
    sys.exit(main())
