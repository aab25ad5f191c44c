"""Adversarial suite: see harness.py for how each attempt is classified."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
