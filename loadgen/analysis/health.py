"""The client-bound rule: when loadgen itself, not the server, may have set a level's numbers.

Input: per-worker lag samples or their p99s (event-loop lag; schedule lag, the
time a request left after its scheduled send), and the thresholds of
``ClusterConfig``. Output: the workers that break the rule, each with the
reason in words. The driver's live warning, the level's verdict and the report
all apply this one rule; only the data they have differ (samples so far, or
the level's records and telemetry).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from loadgen.config import ClusterConfig


def p99_by_worker(worker_id: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """The 99th percentile of ``values`` for each worker (NaN values left out)."""
    keep = np.isfinite(values)
    worker_id, values = worker_id[keep], values[keep]
    if worker_id.size == 0:
        return {}
    order = np.argsort(worker_id, kind="stable")
    ids, starts = np.unique(worker_id[order], return_index=True)
    return {int(w): float(np.percentile(v, 99)) for w, v in zip(ids, np.split(values[order], starts[1:]))}


@dataclass(frozen=True)
class ClientBoundRule:
    """A worker is client-bound when its p99 event-loop lag or p99 schedule lag passes its threshold."""

    loop_lag_ms: float  # cluster.loop_lag_warn_ms
    schedule_lag_ms: float  # cluster.schedule_lag_warn_ms

    @classmethod
    def of(cls, cluster: ClusterConfig) -> ClientBoundRule:
        """The rule with the thresholds of a cluster config."""
        return cls(loop_lag_ms=cluster.loop_lag_warn_ms, schedule_lag_ms=cluster.schedule_lag_warn_ms)

    def judge(
        self,
        loop_lag_p99: Mapping[int, float],
        schedule_lag_p99: Optional[Mapping[int, float]] = None,
    ) -> dict[int, str]:
        """Workers breaking the rule, each with why (schedule lag is given for open-loop levels only)."""
        out: dict[int, str] = {}
        for w, p99 in sorted((schedule_lag_p99 or {}).items()):
            if p99 > self.schedule_lag_ms:
                out[w] = f"worker {w}: schedule lag p99 {p99:.1f} ms > {self.schedule_lag_ms:g} ms"
        for w, p99 in sorted(loop_lag_p99.items()):
            if p99 > self.loop_lag_ms:
                out.setdefault(w, f"worker {w}: event-loop lag p99 {p99:.1f} ms > {self.loop_lag_ms:g} ms")
        return out
