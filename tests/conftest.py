"""Test-wide setup: any local Ray a test starts stays on 127.0.0.1."""

from __future__ import annotations

import os

# Ray reads this when it is imported, so it must be set before any test module imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
