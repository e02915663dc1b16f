"""Where everything of a run lives: the one place that spells a run directory's paths.

Input: a run directory (a local path or a ``pyarrow.fs`` URI) and, for
records, the optional ``cluster.records_uri``. Output: paths. The layout is
documented for users in ``docs/run-directory.md``.
"""

from __future__ import annotations

import os
import re
from typing import Optional

RUN_JSON = "run.json"
RECORDS = "records"
TELEMETRY = "telemetry"
SERVER_METRICS = "server_metrics.parquet"
SIM_GROUND_TRUTH = "sim_ground_truth.parquet"
SUMMARY_JSON = "summary.json"
SUMMARY_PARQUET = "summary.parquet"
REPORT_HTML = "report.html"

#: Finds the level of a part file from its path (``…/level=K/…``).
LEVEL_IN_PATH = re.compile(r"/level=(-?\d+)/")


def _join(root: str, *parts: str) -> str:
    # "/" rather than os.path.join: the same paths serve s3:// and other URIs.
    return "/".join([root.rstrip("/"), *parts])


def run_file(run_dir: str, name: str) -> str:
    """A file at the top of the run directory (``RUN_JSON``, ``SUMMARY_JSON``, …)."""
    return os.path.join(run_dir, name)


def records_root(run_dir: str, records_uri: Optional[str] = None) -> str:
    """The root of the records dataset: ``records_uri`` when set, else ``run_dir/records``."""
    return (records_uri or _join(run_dir, RECORDS)).rstrip("/")


def part_dir(records_root_uri: str, level: int, worker_id: int) -> str:
    """The hive partition directory of one (level, worker) under a records root."""
    return _join(records_root_uri, f"level={level}", f"worker={worker_id}")


def telemetry_root(run_dir: str) -> str:
    """Where every worker's telemetry parts live."""
    return _join(run_dir, TELEMETRY)


def telemetry_dir(run_dir: str, worker_id: int) -> str:
    """Where one worker's telemetry parts live."""
    return _join(run_dir, TELEMETRY, f"worker={worker_id}")


def is_part(path: str) -> bool:
    """Whether ``path`` is a complete Parquet part (not a temporary file being written)."""
    return path.endswith(".parquet") and "/." not in path and not os.path.basename(path).startswith(".")
