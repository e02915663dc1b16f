"""Where everything of a run lives: the one place that spells a run directory's paths.

Input: a run directory (a local path or a ``pyarrow.fs`` URI) and, for
records, the optional ``cluster.records_uri``. Output: paths. The layout is
documented for users in ``docs/run-directory.md``.

Parts are flat files, ``records/part-level-K-worker-W-N-*.parquet`` and
``telemetry/part-worker-W-N-*.parquet``: the level and worker are in the file
name, not in directories, on purpose. Every column (``level``, ``worker_id``
included) is in every file, so a part read alone is complete. A hive directory
``level=K`` would make hive readers add ``level`` a second time with another
type (pyarrow infers ``dictionary<int32>`` for the key, the file says
``int32``), which pandas and ``pq.read_table`` refuse; plain nested directories
(``level-K/``) are not read by Spark without ``recursiveFileLookup``. One flat
directory of self-describing files is read as it is by pandas, pyarrow, polars,
DuckDB and Spark, with the files' own types (tests/test_dataset_tools.py); a
filter on ``level`` still skips other levels' files, by their statistics.
Run directories written before (``level=K/worker=W/part-*.parquet``) stay
readable by loadgen's readers: ``keys_of`` knows every spelling.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import NamedTuple, Optional

RUN_JSON = "run.json"
RECORDS = "records"
TELEMETRY = "telemetry"
SERVER_METRICS = "server_metrics.parquet"
SIM_GROUND_TRUTH = "sim_ground_truth.parquet"
SUMMARY_JSON = "summary.json"
SUMMARY_PARQUET = "summary.parquet"
REPORT_HTML = "report.html"

#: The level and worker of a record part, from its path below the records root:
#: ``part-level-K-worker-W-…`` (flat), ``level=K/worker=W/…`` (older runs), ``level-K/worker-W/…``.
_KEYS_IN_PATH = re.compile(r"(?:^|/|/part-)level[-=](?P<level>-?\d+)[/-]worker[-=](?P<worker>\d+)[/-]")


class Parts(NamedTuple):
    """Where one writer's parts go: a directory, and the name each of its part files starts with."""

    dir: str
    prefix: str = "part"

    def name(self, n: int, tag: str) -> str:
        """The file name of part ``n`` of the writer tagged ``tag``."""
        return f"{self.prefix}-{n:05d}-{tag}.parquet"

    @property
    def pattern(self) -> str:
        """A glob matching every complete part of these (``Path(dir).glob(pattern)``)."""
        return f"{self.prefix}-*.parquet"

    def files(self) -> list[str]:
        """The complete parts there now, sorted (``dir`` a local directory; none when it does not exist)."""
        if not os.path.isdir(self.dir):
            return []
        return sorted(os.path.join(self.dir, n) for n in os.listdir(self.dir) if fnmatch.fnmatchcase(n, self.pattern))


def _join(root: str, *parts: str) -> str:
    # "/" rather than os.path.join: the same paths serve s3:// and other URIs.
    return "/".join([root.rstrip("/"), *parts])


def run_file(run_dir: str, name: str) -> str:
    """A file at the top of the run directory (``RUN_JSON``, ``SUMMARY_JSON``, …)."""
    return os.path.join(run_dir, name)


def records_root(run_dir: str, records_uri: Optional[str] = None) -> str:
    """The root of the records dataset: ``records_uri`` when set, else ``run_dir/records``."""
    return (records_uri or _join(run_dir, RECORDS)).rstrip("/")


def record_parts(records_root_uri: str, level: int, worker_id: int) -> Parts:
    """Where one (level, worker)'s record parts go: ``part-level-K-worker-W-*.parquet`` in the records root."""
    return Parts(records_root_uri.rstrip("/"), f"part-level-{level}-worker-{worker_id}")


#: The older name of ``record_parts`` (``PartWriter(part_dir(root, level, worker))`` still writes there).
part_dir = record_parts


def keys_of(path: str, root: str) -> Optional[tuple[int, int]]:
    """(level, worker) of the record part at ``path`` under ``root``, from its name; None when it says neither."""
    m = _KEYS_IN_PATH.search(path[len(root.rstrip("/")):] if path.startswith(root.rstrip("/")) else path)
    return (int(m.group("level")), int(m.group("worker"))) if m else None


def telemetry_root(run_dir: str) -> str:
    """Where every worker's telemetry parts live."""
    return _join(run_dir, TELEMETRY)


def telemetry_parts(run_dir: str, worker_id: int) -> Parts:
    """Where one worker's telemetry parts go: ``telemetry/part-worker-W-*.parquet``."""
    return Parts(telemetry_root(run_dir), f"part-worker-{worker_id}")


def is_part(path: str) -> bool:
    """Whether ``path`` is a complete Parquet part (not a temporary file being written)."""
    return path.endswith(".parquet") and "/." not in path and not os.path.basename(path).startswith(".")
