"""The canonical request table that every workload reader produces.

One row per request (see DESIGN.md). Output of ``loadgen.workload.load``;
input of ``loadgen.schedule``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

MESSAGE_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

#: Columns of the request table. ``arrival_s`` is null for closed-loop rows and for
#: later turns of a session (they are sent when the previous turn has finished).
REQUEST_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64()),
        pa.field("session_id", pa.string()),
        pa.field("turn", pa.int32()),
        pa.field("input_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("prompt", pa.string()),
        pa.field("messages", pa.list_(MESSAGE_TYPE)),
        pa.field("prefix_group", pa.string()),
    ]
)


@dataclass
class Workload:
    """A request table plus what the reader had to say about its source."""

    table: pa.Table  # conforms to REQUEST_SCHEMA
    source: str = "synthetic"  # file path or "synthetic"
    kind: str = "synthetic"  # the workload kind that produced it
    rows_read: int = 0  # data rows seen in the source
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (workload.on_error=skip)
    notes: list[str] = field(default_factory=list)  # filters applied, rescaling, clipping

    @property
    def has_arrivals(self) -> bool:
        """Whether the table carries trace arrival times (open-loop replay is possible)."""
        col = self.table.column("arrival_s")
        return col.null_count < len(col)

    @property
    def has_sessions(self) -> bool:
        """Whether some requests are later turns of a multi-turn session."""
        return bool(len(self.table)) and int(pa.compute.max(self.table.column("turn")).as_py() or 0) > 0

    def summary(self) -> dict:
        """JSON-ready description for run.json."""
        return {
            "kind": self.kind,
            "source": self.source,
            "rows_read": self.rows_read,
            "requests": self.table.num_rows,
            "skipped": dict(self.skipped),
            "notes": list(self.notes),
        }
