"""The browser test builds its finished run from the finalize tests' helpers (tests/train, tests/finalize)."""

from __future__ import annotations

import sys
from pathlib import Path

for helpers in ("train", "finalize"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / helpers))
