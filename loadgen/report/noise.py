"""How the comparison's intervals and noise verdicts read, shared by the terminal and HTML reports.

Input: a ``ComparisonRow`` (or one interval). Output: short strings such as
"[78.1, 82.0]" and "different (2.00×)".
"""

from __future__ import annotations

from typing import Optional

from loadgen.analysis import ComparisonRow
from loadgen.analysis.confidence import Interval
from loadgen.report.verdicts import num, pct


def interval_text(bounds: Optional[Interval], percent: bool = False) -> str:
    """'[low, high]' of a 95 % interval; '—' for a side the data cannot bound; '' without an interval."""
    if bounds is None or tuple(bounds) == (None, None):
        return ""
    show = pct if percent else num
    return f"[{show(bounds[0])}, {show(bounds[1])}]"


def value_text(row: ComparisonRow, run: int) -> str:
    """A run's value with its interval, e.g. '80.0 [78.1, 82.0]'."""
    percent = row.metric == "error rate"
    value = pct(row.values[run]) if percent else num(row.values[run])
    bounds = interval_text(row.intervals[run] if row.intervals else None, percent)
    return f"{value} {bounds}".rstrip()


def verdict_text(row: ComparisonRow, run: int) -> str:
    """The noise verdict against the first run with the ratio beside it, e.g. 'different (2.00×)'."""
    ratio = row.ratios[run]
    ratio_text = "—" if ratio is None else f"{ratio:.2f}×"
    verdict = row.verdicts[run] if row.verdicts else None
    return ratio_text if verdict is None else f"{verdict} ({ratio_text})"
