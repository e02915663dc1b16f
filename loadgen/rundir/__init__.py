"""The run directory: its layout, its tables' schemas, its typed metadata, its writers and readers.

Everything that reads or writes a run directory goes through this package, and
nothing else spells a path or a column name. ``layout`` (every path),
``schema`` (records, telemetry, server metrics, statuses), ``meta`` (``run.json``
as ``RunMeta``/``LevelEntry``/``Ledger``/``WorkerHealth``), ``parts`` (the
record buffer and the crash-safe part writer), ``read`` (levels, telemetry,
server metrics, scrubbing for display).
"""

from __future__ import annotations

from loadgen.rundir.layout import Parts, part_dir, record_parts, records_root, run_file, telemetry_parts
from loadgen.rundir.meta import (
    Ledger,
    LevelEntry,
    LoadMode,
    RunDirError,
    RunMeta,
    RunStatus,
    WorkerHealth,
    read_meta,
)
from loadgen.rundir.parts import PartWriter, RecordBuffer, RecordError, to_batch
from loadgen.rundir.read import (
    iter_level_tables,
    read_level,
    read_records,
    read_server_metrics,
    read_telemetry,
    run_records_root,
    scrub,
)
from loadgen.rundir.schema import (
    ERROR_STATUSES,
    RECORD_FIELDS,
    RECORD_SCHEMA,
    SERVER_METRICS_SCHEMA,
    STATUSES,
    TELEMETRY_SCHEMA,
)

__all__ = [
    "ERROR_STATUSES",
    "Ledger",
    "LevelEntry",
    "LoadMode",
    "PartWriter",
    "Parts",
    "RECORD_FIELDS",
    "RECORD_SCHEMA",
    "RecordBuffer",
    "RecordError",
    "RunDirError",
    "RunMeta",
    "RunStatus",
    "SERVER_METRICS_SCHEMA",
    "STATUSES",
    "TELEMETRY_SCHEMA",
    "WorkerHealth",
    "iter_level_tables",
    "part_dir",
    "read_level",
    "read_meta",
    "read_records",
    "read_server_metrics",
    "read_telemetry",
    "record_parts",
    "records_root",
    "run_file",
    "run_records_root",
    "scrub",
    "telemetry_parts",
    "to_batch",
]
