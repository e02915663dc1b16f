"""The request ledger: every planned request is sent or not sent, every sent one ends in exactly one way.

Input: a level's ``ledger`` entry of run.json (or, for a run without one, the
status counts of its records) and the number of records on disk. Output:
``Ledger`` with ``problems()`` naming each count that does not reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


@dataclass
class Ledger:
    """Counts that must reconcile: planned = sent + not sent; sent = ok + errors + cancelled + lost."""

    planned: int = 0
    sent: int = 0
    not_sent: dict[str, int] = field(default_factory=dict)  # reason -> count
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # status -> count
    cancelled: int = 0
    lost: int = 0  # sent by a worker that died before recording them
    records: Optional[int] = None  # rows found on disk (None: not checked)
    source: str = "run.json"  # run.json | records (derived when run.json has no ledger)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], records: Optional[int] = None) -> Ledger:
        """Read a run.json ``ledger`` entry."""
        return cls(
            planned=int(meta.get("planned", 0)),
            sent=int(meta.get("sent", 0)),
            not_sent={k: int(v) for k, v in (meta.get("not_sent") or {}).items()},
            ok=int(meta.get("ok", 0)),
            errors={k: int(v) for k, v in (meta.get("errors") or {}).items()},
            cancelled=int(meta.get("cancelled", 0)),
            lost=int(meta.get("lost", 0)),
            records=records,
        )

    @classmethod
    def from_status_counts(cls, counts: Mapping[str, int]) -> Ledger:
        """Derive a ledger from record status counts (planned = sent = records; nothing lost is known)."""
        total = sum(counts.values())
        return cls(
            planned=total,
            sent=total,
            ok=counts.get("ok", 0),
            errors={k: v for k, v in counts.items() if k not in ("ok", "cancelled")},
            cancelled=counts.get("cancelled", 0),
            records=total,
            source="records",
        )

    @property
    def error_total(self) -> int:
        """Sent requests that ended in an error of any class."""
        return sum(self.errors.values())

    def problems(self) -> list[str]:
        """Each way the counts fail to reconcile, in words (empty when the ledger closes)."""
        out = []
        not_sent = sum(self.not_sent.values())
        if self.planned != self.sent + not_sent:
            out.append(f"planned {self.planned} ≠ sent {self.sent} + not sent {not_sent}")
        ended = self.ok + self.error_total + self.cancelled + self.lost
        if self.sent != ended:
            out.append(
                f"sent {self.sent} ≠ ok {self.ok} + errors {self.error_total}"
                f" + cancelled {self.cancelled} + lost {self.lost} (= {ended})"
            )
        if self.records is not None and self.records != self.sent - self.lost:
            out.append(f"{self.records} records on disk, but sent − lost = {self.sent - self.lost}")
        return out

    @property
    def closes(self) -> bool:
        """Whether every count reconciles."""
        return not self.problems()

    def __add__(self, other: Ledger) -> Ledger:
        def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(a.keys() | b.keys())}

        return Ledger(
            planned=self.planned + other.planned,
            sent=self.sent + other.sent,
            not_sent=merge(self.not_sent, other.not_sent),
            ok=self.ok + other.ok,
            errors=merge(self.errors, other.errors),
            cancelled=self.cancelled + other.cancelled,
            lost=self.lost + other.lost,
            records=None if self.records is None or other.records is None else self.records + other.records,
            source=self.source if self.source == other.source else "mixed",
        )
