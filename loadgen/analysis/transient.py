"""How a server answers a load step or burst: time to first success, time to reach the new rate.

Input: one level's request end times and statuses, the step time and the new
rate (from run.json: ``step_at_ns`` and the level value). Output: a
``StepResponse`` — the figures serverless and autoscaling tests are about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class StepResponse:
    """A level's response to its step or burst, in seconds after the step."""

    shape: str  # step | burst
    new_rate: float  # req/s after the step (step), or requests in the burst (burst)
    first_success_s: Optional[float]  # first request completed ok after the step
    reach_rate_s: Optional[float]  # step: end of the first 1 s window completing >= tolerance x new rate
    all_done_s: Optional[float]  # burst: the last request of the burst completed (any status)
    completed: int  # requests scheduled at or after the step that completed ok


def step_response(
    scheduled_ns: np.ndarray,
    end_ns: np.ndarray,
    ok: np.ndarray,
    step_at_ns: int,
    new_rate: float,
    shape: str,
    *,
    tolerance: float = 0.9,
    window_s: float = 1.0,
) -> StepResponse:
    """Time to first success and time to reach the new rate, for requests sent from the step on.

    reach_rate_s = min over t of (t − step) such that the completions (ok) of
    those requests in [t − window_s, t) number at least tolerance × new_rate ×
    window_s; the windows slide over completion times.
    """
    after = scheduled_ns >= step_at_ns
    ends = np.sort(end_ns[after & ok]).astype(np.int64)
    first = (ends[0] - step_at_ns) / 1e9 if ends.size else None
    reach = None
    need = int(np.ceil(tolerance * new_rate * window_s))
    if shape == "step" and need > 0 and ends.size >= need:
        window_ns = int(window_s * 1e9)
        # The window ending at ends[i] holds ends[j..i] with ends[j] > ends[i] - window.
        j = np.searchsorted(ends, ends - window_ns, side="right")
        hits = np.flatnonzero(np.arange(ends.size) - j + 1 >= need)
        if hits.size:
            reach = (ends[hits[0]] - step_at_ns) / 1e9
    done = None
    if shape == "burst" and np.any(after):
        done = (int(end_ns[after].max()) - step_at_ns) / 1e9
    return StepResponse(
        shape=shape,
        new_rate=new_rate,
        first_success_s=first,
        reach_rate_s=reach,
        all_done_s=done,
        completed=int(ends.size),
    )
