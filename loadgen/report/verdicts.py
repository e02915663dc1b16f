"""The run's verdicts in plain words, and number formatting shared by every report format.

Input: a ``RunSummary``. Output: sentences (saturation, knee, goodput
capacity, capacity plan, client-bound levels, ledger, notes).
"""

from __future__ import annotations

from typing import Optional

from loadgen.analysis import LevelSummary, RunSummary
from loadgen.config import SLOConfig


def num(value: Optional[float], unit: str = "") -> str:
    """A number with sensible precision ('—' for missing): 1,234 · 56.7 · 8.90 · 0.123."""
    if value is None:
        return "—"
    a = abs(value)
    text = f"{value:,.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.2f}" if a >= 0.1 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def pct(value: Optional[float]) -> str:
    """A fraction as a percentage ('—' for missing)."""
    return "—" if value is None else f"{value:.1%}"


def slo_words(slo: SLOConfig) -> str:
    """The SLOs that are set, e.g. 'TTFT ≤ 2000 ms, TPOT ≤ 100 ms'."""
    parts = [
        f"{name} ≤ {getattr(slo, key):g} ms"
        for key, name in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E"))
        if getattr(slo, key) is not None
    ]
    return ", ".join(parts) or "no latency SLO set"


def load_words(lv: LevelSummary) -> str:
    """A level's load, e.g. '16 req/s offered' or '64 streams'."""
    return f"{num(lv.load)} req/s offered" if lv.open_loop else f"{lv.value:g} streams"


def _level(summary: RunSummary, n: Optional[int]) -> Optional[LevelSummary]:
    return next((lv for lv in summary.levels if lv.level == n), None)


def saturation_sentence(summary: RunSummary) -> str:
    """Where the server saturated, or why that is unknown."""
    sat = summary.saturation
    lv = _level(summary, sat.level)
    rule = f" (Rule: {sat.rule}.)"
    if lv is None:
        return f"No saturation point: {sat.reason}.{rule}"
    where = f"{load_words(lv)} (level {lv.level})"
    served = f"it served {num(sat.throughput_rps)} req/s and {num(sat.output_tok_s)} output tok/s there"
    if not sat.reached:
        return f"The server did not saturate: every level up to {where} passed; {served}.{rule}"
    return f"The server saturated at {where}: {served}; past it, {sat.reason}.{rule}"


def knee_sentence(summary: RunSummary) -> str:
    """The Kneedle knee and its rule."""
    knee = summary.knee
    if knee.level is None:
        return f"No knee: {knee.reason} (rule: {knee.rule})."
    return f"Knee at level {knee.level}: {knee.x_label} {num(knee.x)}, {knee.y_label} {num(knee.y)} (rule: {knee.rule})."


def capacity_sentence(summary: RunSummary) -> str:
    """The goodput capacity with the bracket it came from, consistent with the saturation verdict."""
    cap, slo = summary.goodput_capacity, summary.slo
    target = f"≥ {cap.attainment:.0%} of requests within {slo_words(slo)}"
    if cap.at_least and cap.rate is not None:
        return (
            f"Goodput capacity ≥ {num(cap.rate)} req/s ({target}): not bracketed, every judged level met the target "
            f"(highest: level {cap.lower_level}); raise the levels to find it."
        )
    if cap.rate is not None:
        text = (
            f"Goodput capacity {num(cap.rate)} req/s ({target}), between the goodput of level {cap.lower_level} "
            f"({num(cap.lower_rate)} req/s, {pct(cap.lower_attainment)} within SLO) and level {cap.upper_level} "
            f"({num(cap.upper_rate)} req/s, {pct(cap.upper_attainment)}); the best any level delivered was {num(cap.best_goodput)} req/s."
        )
    else:
        text = f"No goodput capacity ({target}): {cap.reason}."
    sat = summary.saturation
    if sat.level is None and sat.first_failing_level is not None and cap.rate is not None:
        # Both verdicts hold at once: the saturation rule asks every request's p-tile, goodput only a share.
        text += (
            f" The saturation rule failed even the lowest level (its p{slo.percentile:g} objective or keeping up), "
            f"while {cap.attainment:.0%} of requests still met the SLOs up to this rate."
        )
    return text


def plan_sentences(summary: RunSummary) -> list[str]:
    """Replicas for the target rate and cost per million output tokens."""
    plan = summary.plan
    if plan is None:
        if summary.analysis.target_rate is not None or summary.analysis.price_per_replica_hour is not None:
            return ["No capacity plan: no level passed, so the per-replica capacity is unknown."]
        return []
    basis = f"{num(plan.per_replica_rps)} req/s per replica ({plan.basis})"
    out = []
    if plan.replicas is not None:
        bound = "at most " if plan.lower_bound else ""
        spread = ""
        if plan.replicas_range and plan.replicas_range[0] != plan.replicas_range[1]:
            lo, hi = plan.bracket or (None, None)
            spread = (
                f" (from {plan.replicas_range[0]} to {plan.replicas_range[1]} across the capacity's bracket, "
                f"{num(hi)} to {num(lo)} req/s per replica)"
            )
        out.append(
            f"{num(plan.target_rps)} req/s needs {bound}{plan.replicas} replica{'s' if plan.replicas != 1 else ''} "
            f"at {basis}{spread}, leaving {plan.margin:.0%} spare capacity."
        )
    if plan.cost_per_million_tokens is not None:
        out.append(
            f"Cost: ${plan.cost_per_million_tokens:.3f} per 1M output tokens at {num(plan.output_tok_s)} output tok/s "
            f"per replica and ${plan.price_per_replica_hour:g} per replica-hour"
            + (f" (${plan.cost_per_hour:,.2f}/h for the fleet)." if plan.cost_per_hour is not None else ".")
        )
    if plan.lower_bound:
        out.append("The capacity was not bracketed, so it is at least the figure above and the replica count an upper bound: measure higher levels to tighten it.")
    return out


def client_bound_sentence(summary: RunSummary) -> Optional[str]:
    """Which levels loadgen itself limited, and by which workers."""
    bound = [lv for lv in summary.levels if lv.client_bound]
    if not bound:
        return None
    details = "; ".join(f"level {lv.level}: {', '.join(lv.client_bound_reasons)}" for lv in bound)
    return (
        f"Client-bound level{'s' if len(bound) > 1 else ''} {', '.join(str(lv.level) for lv in bound)} — loadgen, not the server, may have set the "
        f"latencies measured there ({details}). Add workers or nodes and rerun those levels."
    )


def step_sentences(summary: RunSummary) -> list[str]:
    """How each step or burst level was answered: first success, new rate reached, burst done."""
    out = []
    for lv in summary.levels:
        st = lv.step
        if st is None:
            continue
        first = f"first success {num(st.first_success_s, 's')} after it" if st.first_success_s is not None else "no request succeeded after it"
        if st.shape == "burst":
            done = f"; the burst of {st.new_rate:g} requests was fully answered after {num(st.all_done_s, 's')}" if st.all_done_s is not None else ""
            out.append(f"Level {lv.level} (burst): {first}{done}.")
        else:
            reach = (
                f"; it reached {summary.analysis.saturation_tolerance:g} × {st.new_rate:g} req/s after {num(st.reach_rate_s, 's')}"
                if st.reach_rate_s is not None
                else f"; it never completed {summary.analysis.saturation_tolerance:g} × {st.new_rate:g} req/s in any 1 s window"
            )
            out.append(f"Level {lv.level} (step to {st.new_rate:g} req/s): {first}{reach}.")
    return out


def ledger_sentence(summary: RunSummary) -> str:
    """The run's request ledger and whether it closes."""
    ld = summary.ledger
    not_sent = sum(ld.not_sent.values())
    text = (
        f"Ledger: {ld.planned:,} planned = {ld.sent:,} sent + {not_sent:,} not sent; sent = {ld.ok:,} ok + "
        f"{ld.error_total:,} errors + {ld.cancelled:,} cancelled + {ld.lost:,} lost"
    )
    by_class = ", ".join(f"{n:,} {kind}" for kind, n in sorted(ld.errors.items()) if n)
    if by_class:
        text += f" (errors: {by_class})"
    problems = [f"level {lv.level}: {p}" for lv in summary.levels for p in lv.ledger.problems()] or ld.problems()
    return text + (" — closes." if not problems else " — DOES NOT CLOSE: " + "; ".join(problems) + ".")


def verdicts(summary: RunSummary) -> list[str]:
    """Every verdict of the run as a sentence, most important first."""
    out = [saturation_sentence(summary), knee_sentence(summary), capacity_sentence(summary)]
    out += plan_sentences(summary)
    out += step_sentences(summary)
    bound = client_bound_sentence(summary)
    if bound:
        out.append(bound)
    out.append(ledger_sentence(summary))
    return out
