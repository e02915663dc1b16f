"""Token lengths resampled from a trace file: the one place a workload reads another workload.

Input: a trace path and a column (``input_tokens`` or ``output_tokens``).
Output: that column's values, read through the package's own trace readers.
The readers live in ``loadgen.workload``, which also imports the synthetic
reader that asks for these lengths; so the package hands its row reader to
this module when it loads (``use_reader``) instead of being imported from
below, which would be a cycle.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

from loadgen.config import WorkloadConfig

COLUMNS = ("input_tokens", "output_tokens")

#: Reads a trace file into its rows (``loadgen.workload``'s reader); set by ``use_reader``.
_read_trace: Optional[Callable[[str], pa.Table]] = None


def use_reader(read_trace: Callable[[str], pa.Table]) -> None:
    """Install the function that reads a trace file's rows (called once, by ``loadgen.workload``)."""
    global _read_trace
    _read_trace = read_trace
    _lengths.cache_clear()


@functools.lru_cache(maxsize=4)
def _lengths(path: str, mtime: float) -> pa.Table:
    assert _read_trace is not None, "loadgen.workload installs its trace reader when it is imported"
    return _read_trace(path).select(list(COLUMNS))


def empirical_values(path: str, column: str) -> np.ndarray:
    """The lengths in one column of a trace (format detected from the file)."""
    return _lengths(path, os.path.getmtime(path)).column(column).to_numpy()


def trace_config(path: str, kind: str) -> WorkloadConfig:
    """The workload config that reads ``path`` as it is, for its lengths."""
    return WorkloadConfig(kind=kind, path=path)
