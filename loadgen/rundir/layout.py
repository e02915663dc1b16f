"""Where everything of a run lives: the one place that spells a run directory's paths.

Input: a run directory (a local path or a ``pyarrow.fs`` URI) and, for
records, the optional ``cluster.records_uri``. Output: paths. The layout is
documented for users in ``docs/run-directory.md``.

Parts sit in ``records/level-K/worker-W/`` and ``telemetry/worker-W/``:
directory names with ``-``, not hive's ``key=value``, on purpose. Every column
(``level``, ``worker_id`` included) is in every file, so a part read alone is
complete, and a hive reader that also made ``level`` a partition key would
find it twice with two types (pyarrow infers ``dictionary<int32>`` for the key,
the file says ``int32``) and refuse the dataset. Without keys in the path,
pandas, pyarrow, polars and DuckDB read the directory as it is, with the
files' own types (tests/test_dataset_tools.py); a filter on ``level`` still
skips other levels' files, by their Parquet statistics.
Run directories written before (``level=K/worker=W``) stay readable by
loadgen's readers: ``level_dirs`` and ``LEVEL_IN_PATH`` know both spellings.
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

#: Finds the level of a part file from its path (``…/level-K/…``, or ``…/level=K/…`` in older runs).
LEVEL_IN_PATH = re.compile(r"/level[-=](-?\d+)/")


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
    """The directory of one (level, worker)'s record parts under a records root (``level-K/worker-W``)."""
    return _join(records_root_uri, f"level-{level}", f"worker-{worker_id}")


def level_dirs(records_root_uri: str, level: int) -> tuple[str, ...]:
    """Where one level's record parts may be under a records root: this layout's directory, then the older one."""
    return _join(records_root_uri, f"level-{level}"), _join(records_root_uri, f"level={level}")


def part_dirs(records_root_uri: str, level: int, worker_id: int) -> tuple[str, ...]:
    """Where one (level, worker)'s record parts may be: ``part_dir``, then the older hive-style directory."""
    return part_dir(records_root_uri, level, worker_id), _join(records_root_uri, f"level={level}", f"worker={worker_id}")


def telemetry_root(run_dir: str) -> str:
    """Where every worker's telemetry parts live."""
    return _join(run_dir, TELEMETRY)


def telemetry_dir(run_dir: str, worker_id: int) -> str:
    """Where one worker's telemetry parts live (``telemetry/worker-W``)."""
    return _join(run_dir, TELEMETRY, f"worker-{worker_id}")


def is_part(path: str) -> bool:
    """Whether ``path`` is a complete Parquet part (not a temporary file being written)."""
    return path.endswith(".parquet") and "/." not in path and not os.path.basename(path).startswith(".")
