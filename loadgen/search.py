"""The adaptive sweep (``load=search``): measure levels until the capacity is bracketed tightly.

Input: the config and a callback that runs one level. Output: the levels it
chose, each judged by the analysis module right after it ran (from that
level's own records, so each judgement costs the same); the choice of
the next rate is ``loadgen.analysis.next_search_level`` (geometric steps, then
bisection between the highest passing and the lowest failing rate).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from loadgen.analysis import LevelSummary, SearchPoint, next_search_level
from loadgen.config import LoadgenConfig
from loadgen.rundir import LoadMode
from loadgen.schedule import LevelSpec


def run_search(
    cfg: LoadgenConfig,
    run_level: Callable[[LevelSpec], LevelSummary],
    stop: threading.Event,
    deadline: float,
) -> list[SearchPoint]:
    """Run levels chosen one at a time until the search converges, is stopped, or runs out of time.

    ``run_level`` runs one level and returns it judged from its own records.
    A level that could not be judged (too short, interrupted) is not a point.
    """
    points: list[SearchPoint] = []
    index = 0
    while not stop.is_set() and time.monotonic() < deadline:
        rate = next_search_level(points, cfg.load)
        if rate is None:
            break
        level = run_level(LevelSpec(index=index, mode=LoadMode.RATE, value=float(rate)))
        index += 1
        if level.judged:
            points.append(SearchPoint.of(level))
        elif index >= cfg.load.search_max_levels:
            break
    return points
