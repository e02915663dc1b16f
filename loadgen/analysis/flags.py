"""A level's flags: which verdicts a level carries, decided once for every report.

Input: a ``RunSummary`` and one of its ``LevelSummary``s. Output: the level's
``Flag``s, most important first. The terminal table shows each flag's
``words``, report.html its ``short`` badge with ``meaning`` in a legend; both
take the decision from here, so they cannot disagree.
"""

from __future__ import annotations

import enum

from loadgen.analysis.level import LevelSummary
from loadgen.analysis.summary import RunSummary


class Flag(enum.Enum):
    """One verdict a level can carry: (short badge, words, meaning)."""

    POINT = ("★ point", "◀ saturation point", "the saturation point: the highest level that passed")
    INTERRUPTED = ("STOP", "interrupted", "interrupted by the user")
    SHORT = ("SHORT", "too short to judge", "too short to judge")
    SATURATED = ("SAT", "saturated", "saturated: at or past the first level that failed the saturation rule")
    SLO = ("SLO", "SLO miss", "missed a latency objective (or errors) without saturating")
    EARLY = ("EARLY", "stopped early", "stopped early (queue growing or run budget)")
    CLIENT_BOUND = ("CB", "client-bound", "client-bound: loadgen itself may have limited the level")
    LEDGER = ("LEDGER", "ledger open", "the request ledger does not close")

    def __init__(self, short: str, words: str, meaning: str) -> None:
        self.short = short
        self.words = words
        self.meaning = meaning


def level_flags(summary: RunSummary, lv: LevelSummary) -> list[Flag]:
    """The flags of level ``lv`` of ``summary``, most important first ([] when it passed every rule)."""
    flags = []
    if summary.saturation.reached and summary.saturation.level == lv.level:
        flags.append(Flag.POINT)
    if lv.stopped_early == "interrupted":
        flags.append(Flag.INTERRUPTED)
    elif not lv.judged:
        flags.append(Flag.SHORT)
    elif summary.saturated(lv):
        flags.append(Flag.SATURATED)
    elif not lv.slo_met or lv.failures:
        flags.append(Flag.SLO)
    if lv.stopped_early and lv.stopped_early != "interrupted":
        flags.append(Flag.EARLY)
    if lv.client_bound:
        flags.append(Flag.CLIENT_BOUND)
    if not lv.ledger.closes:
        flags.append(Flag.LEDGER)
    return flags
