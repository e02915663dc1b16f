"""Errors of the workload readers, and the bookkeeping of malformed rows.

A malformed row either raises ``WorkloadError`` naming the file, the line (or
row), the field and what was expected (``workload.on_error=raise``), or is
skipped and counted by reason (``workload.on_error=skip``). Never a silent zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np


class WorkloadError(ValueError):
    """A trace or workload cannot be turned into requests; the message says where and why."""


def shown(value: Any) -> str:
    """A short repr of an offending value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class RowIssues:
    """Malformed rows of one source: raise on the first, or skip each and count it by reason."""

    name: str  # the file name shown in messages
    skip: bool = False  # workload.on_error == "skip"
    unit: str = "line"  # "line" for text files (1-based, header included), "row" for Parquet
    skipped: Counter = field(default_factory=Counter)  # reason -> rows skipped

    def where(self, position: Optional[int]) -> str:
        """The location prefix of a message, e.g. ``azure.csv line 17``."""
        return self.name if position is None else f"{self.name} {self.unit} {position}"

    def error(self, position: Optional[int], fld: Optional[str], expected: str, got: str) -> WorkloadError:
        """The error for one malformed value (``got`` is already formatted)."""
        at = self.where(position) + (f", field {fld}" if fld else "")
        return WorkloadError(f"{at}: expected {expected}, got {got}")

    def report(self, position: Optional[int], fld: Optional[str], expected: str, got: str) -> None:
        """Raise for this row, or count it as skipped."""
        if not self.skip:
            raise self.error(position, fld, expected, got)
        self.skipped[_reason(fld, expected)] += 1


def _reason(fld: Optional[str], expected: str) -> str:
    return f"{fld}: expected {expected}" if fld else f"expected {expected}"


@dataclass
class _Check:
    field: str
    expected: str
    mask: np.ndarray
    values: Sequence[Any]


class BadRows:
    """Which rows of one batch failed which check; resolved in the order the checks were added."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._checks: list[_Check] = []

    def add(self, fld: str, expected: str, mask: np.ndarray, values: Sequence[Any]) -> None:
        """Record that rows where ``mask`` is true hold a bad ``fld`` (their raw values in ``values``)."""
        if mask.any():
            self._checks.append(_Check(fld, expected, mask, values))

    def mask(self) -> np.ndarray:
        """Rows that failed any check so far."""
        out = np.zeros(self.n, dtype=bool)
        for c in self._checks:
            out |= c.mask
        return out

    def first(self) -> Optional[int]:
        """Index of the first bad row, or None."""
        firsts = [int(np.argmax(c.mask)) for c in self._checks]
        return min(firsts) if firsts else None

    def error(self, issues: RowIssues, position: Callable[[int], int]) -> Optional[WorkloadError]:
        """The error for the first bad row (``position`` maps a batch index to a line), or None."""
        i = self.first()
        if i is None:
            return None
        check = next(c for c in self._checks if c.mask[i])
        value = check.values[i]
        value = value.as_py() if hasattr(value, "as_py") else value
        got = "nothing (missing)" if value is None else shown(value)
        return issues.error(position(i), check.field, check.expected, got)

    def resolve(self, issues: RowIssues, position: Callable[[int], int]) -> np.ndarray:
        """Raise for the first bad row, or count bad rows as skipped; return the mask of rows to keep."""
        if not self._checks:
            return np.ones(self.n, dtype=bool)
        if not issues.skip:
            err = self.error(issues, position)
            assert err is not None
            raise err
        taken = np.zeros(self.n, dtype=bool)
        for c in self._checks:
            new = c.mask & ~taken
            if new.any():
                issues.skipped[_reason(c.field, c.expected)] += int(new.sum())
                taken |= new
        return ~taken
