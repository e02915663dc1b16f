"""Test helper: where the shared public trace samples are, and a mark that skips without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``shared/traces`` beside the repository, else ``$LOADGEN_TRACES_DIR``.
TRACES = Path(os.environ.get("LOADGEN_TRACES_DIR") or Path(__file__).resolve().parents[2] / "shared" / "traces")

needs_traces = pytest.mark.skipif(
    not TRACES.is_dir(), reason=f"shared trace samples not found at {TRACES} (set LOADGEN_TRACES_DIR)"
)
