#!/usr/bin/env python
"""The seed's model accuracy test, run at ``docker build`` and per model version.

    python tests/run_accuracy_tests.py MODEL TEST_DATA [--error-tolerance 1e-5]

MODEL is a bundle dir, a model store (its ``latest``), a ``.tar.gz`` of a bundle, or a
``model.pkl`` (or, as the seed allowed, a ``.tar.gz`` holding one). Exits 1 when the score
drops below ``expected_score - tolerance``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli import accuracy

if __name__ == "__main__":
    accuracy.main(prog_name="run_accuracy_tests.py")
