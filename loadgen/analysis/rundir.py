"""Reading a run directory for analysis: run.json, records one level at a time, telemetry, server metrics.

Input: a run directory (layout in ``docs/run-directory.md``). Output: plain
dicts and pyarrow Tables; secrets scrubbed from anything meant to be shown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Optional, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from loadgen.config import REDACTED, redact
from loadgen.records import RECORD_SCHEMA, resolve_fs

T = TypeVar("T")
_LEVEL_DIR = re.compile(r"/level=(-?\d+)/")
#: Keys whose values are never shown, whatever the run.json writer did.
_SECRET_KEY = re.compile(r"api[_-]?key|authorization|secret|password|token$|bearer", re.IGNORECASE)
#: Values that look like credentials (OpenAI/Anthropic/HF-style keys, bearer headers).
_SECRET_VALUE = re.compile(r"\b(?:sk|hf|pk|rk)[-_][A-Za-z0-9_\-]{12,}|Bearer\s+\S+", re.IGNORECASE)


class RunDirError(ValueError):
    """A run directory cannot be read; the message names the file and what is wrong."""


def read_run_json(run_dir: str) -> dict[str, Any]:
    """The run's metadata, or an empty dict when run.json is missing (a crashed run's records still count)."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} cannot be read: {e}") from None
    if not isinstance(meta, dict):
        raise RunDirError(f"{path} holds {type(meta).__name__}, expected a JSON object")
    return meta


def scrub(obj: Any) -> Any:
    """A copy safe to display: secret-named keys and credential-looking strings replaced by '***'."""
    obj = redact(obj)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) and v not in (None, "") else scrub(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return _SECRET_VALUE.sub(REDACTED, obj)
    return obj


def records_root(run_dir: str, meta: dict[str, Any]) -> str:
    """Where the run's records are: ``run_dir/records``, else the configured ``cluster.records_uri``."""
    local = os.path.join(run_dir, "records")
    uri = ((meta.get("config") or {}).get("cluster") or {}).get("records_uri")
    return uri if uri and not os.path.isdir(local) else local


def iter_level_tables(root: str, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """Each level's records (only ``columns``), in level order, at most two levels in memory.

    The next level is read in a background thread while the caller works on
    the current one (Parquet decoding and numpy both release the GIL).
    """
    fs, path = resolve_fs(root)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    files = sorted(i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet") and "/." not in i.path)
    by_level: dict[int, list[str]] = {}
    loose: list[str] = []
    for f in files:
        m = _LEVEL_DIR.search(f)
        (by_level.setdefault(int(m.group(1)), []) if m else loose).append(f)
    loose_table = _read(fs, loose, columns + ["level"]) if loose else None
    levels = set(by_level)
    if loose_table is not None:
        levels |= set(pc.unique(loose_table.column("level")).drop_null().to_pylist())

    def load(level: int) -> pa.Table:
        parts = [_read(fs, by_level[level], columns)] if level in by_level else []
        if loose_table is not None:
            parts.append(loose_table.filter(pc.equal(loose_table.column("level"), level)).select(columns))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    order = sorted(levels)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, order[0]) if order else None
        for i, level in enumerate(order):
            assert pending is not None
            table = pending.result()
            pending = pool.submit(load, order[i + 1]) if i + 1 < len(order) else None
            yield level, table
            del table


def _read(fs: pafs.FileSystem, files: list[str], columns: list[str]) -> pa.Table:
    return ds.dataset(files, schema=RECORD_SCHEMA, filesystem=fs, format="parquet").to_table(columns=columns)


def _read_tables(paths: list[str]) -> Optional[pa.Table]:
    if not paths:
        return None
    return ds.dataset(paths, format="parquet").to_table()


def read_telemetry(run_dir: str) -> Optional[pa.Table]:
    """Per-worker samples (t_ns, level, worker_id, loop_lag_ms, cpu_percent, in_flight, ...) or None."""
    root = os.path.join(run_dir, "telemetry")
    paths = [
        os.path.join(d, f)
        for d, _, names in os.walk(root)
        for f in names
        if f.endswith(".parquet") and not f.startswith(".")
    ]
    return _read_tables(sorted(paths))


def read_server_metrics(run_dir: str) -> Optional[pa.Table]:
    """The target's sampled Prometheus metrics (t_ns, level, name, labels, value) or None."""
    path = os.path.join(run_dir, "server_metrics.parquet")
    return _read_tables([path]) if os.path.exists(path) else None


def config_section(cls: type[T], config: dict[str, Any], name: str) -> T:
    """A config dataclass built from one section of run.json's config (unknown keys ignored, missing ones default)."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in (config.get(name) or {}).items() if k in known})
