#!/usr/bin/env python
"""Validate loadgen's verdicts against servers whose capacity is known without loadgen (issue 11).

Input: which cases to run (all, ``--quick`` for two, or ``--cases a,b``).
Output: one table row per case — the true capacity, the saturation point and
goodput capacity loadgen found, the best goodput any level achieved, the
levels below 80 % of capacity that loadgen called saturated, and PASS/FAIL —
plus a JSON file with every level's figures for diagnosis. Exit code 1 when a
case fails.

Servers with a known answer:

- ``tests/fifo_server.py`` (independent of loadgen: N slots, a FIFO queue,
  fixed TTFT and inter-token time): capacity = N / (TTFT + (tokens − 1) × ITL);
- loadgen's embedded simulator with profiles whose capacity follows, on paper,
  from its step model (``docs/simulator.md``): ``sim_capacity_on_paper``.

The criteria (issue 11), with T the true capacity:

1. saturation: the saturation point S (offered req/s of the last passing
   level) and the first failing level F bracket T within ±15 %:
   S ≤ 1.15 T and F ≥ 0.85 T (a run with no failing level fails: every grid
   here goes past T); and S ≥ 0.85 T when the levels allow it (a search, or
   a sweep with a level offered in [0.85 T, T], which a right verdict calls
   kept up);
2. goodput capacity G: G ≤ 1.15 T, G ≤ the best goodput any level achieved,
   and G ≥ 0.85 T when the levels allow it (as above; with nothing measured
   between 0.66 T and 1.2 T the honest answer is lower, so that bound is not
   asked);
3. no level offered below 0.8 T is called saturated (a level "too short to
   judge" is not called saturated; it is shown as such).

    python scripts/validate_verdicts.py            # every case (about 20 min on 2 cores)
    python scripts/validate_verdicts.py --quick    # two FIFO cases (about 4 min)
    python scripts/validate_verdicts.py --cases fifo-short-sweep,sim-small-sweep --out /tmp/vv
"""

from __future__ import annotations

import os

# A local Ray must stay on loopback; Ray reads this when imported, so set it before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator, Optional  # noqa: E402

from rich.console import Console  # noqa: E402

from loadgen.analysis import analyze_run  # noqa: E402
from loadgen.config import (  # noqa: E402
    AnalysisConfig,
    ClusterConfig,
    LengthDist,
    LoadConfig,
    LoadgenConfig,
    SimProfile,
    SLOConfig,
    TargetConfig,
    WorkloadConfig,
)
from loadgen.runner import run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import fifo_server  # noqa: E402

TOLERANCE = 0.15  # saturation point and goodput capacity within ±15 % of the truth
LOW_FRACTION = 0.8  # no level below 80 % of capacity may be called saturated
MAX_LEVEL_S = 30.0  # no level longer than this (sending phase), unless the case says otherwise
SWEEP = (0.33, 0.66, 0.9, 1.2, 1.5)  # levels as fractions of the true capacity


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One validation case: a server with a known capacity and the load sent to it."""

    name: str
    server: str  # "fifo" (tests/fifo_server.py) or "sim" (loadgen's embedded simulator)
    output_tokens: int
    input_tokens: int = 16
    load: str = "sweep"  # sweep: levels at `fractions` of the truth | search: load=search from `search_start` × truth
    fractions: tuple[float, ...] = SWEEP
    duration_s: float = 8.0  # loadgen's default sweep level
    warmup_s: float = 2.0
    drain_s: float = 30.0
    slo_ttft_ms: Optional[float] = 2500.0  # loose: only saturation (a growing queue) misses it
    slots: int = 4  # fifo
    ttft_ms: float = 50.0  # fifo
    itl_ms: float = 10.0  # fifo
    profile: Optional[SimProfile] = None  # sim
    search_start: float = 0.3  # search: first rate, as a fraction of the truth
    search_max_levels: int = 6
    max_run_s: float = 300.0
    max_level_s: float = MAX_LEVEL_S  # load.max_duration_s: the longest level loadgen may stretch to
    note: str = ""


#: A slot-bound simulator profile: 8 sequences, 20 ms steps (the capacity is derived in docs/verdicts.md).
SIM_SMALL = SimProfile(name="small-8seq", max_num_seqs=8, step_base_ms=20.0, step_per_seq_ms=0.5,
                       step_per_prefill_token_ms=0.05, model="sim-small")
#: The default profile's engine with 16 sequences, for 1,024-token outputs (~7 s requests, ~2,400 tok/s at capacity).
SIM_LONG = SimProfile(name="long-16seq", max_num_seqs=16, step_base_ms=6.0, step_per_seq_ms=0.05,
                      step_per_prefill_token_ms=0.05, kv_cache_tokens=450_000, model="sim-long")
#: conf/target/sim-70b.yaml (64 sequences, 12 ms base step), copied so that the truth is derived from fixed figures.
SIM_70B = SimProfile(name="llama3.1-70b-8xh100", max_num_seqs=64, max_num_batched_tokens=2048, kv_cache_tokens=1_300_000,
                     block_size=16, step_base_ms=12.0, step_per_seq_ms=0.1, step_per_prefill_token_ms=0.06,
                     model="sim-llama3.1-70b")

CASES: dict[str, Case] = {c.name: c for c in (
    Case("fifo-short-sweep", "fifo", output_tokens=32, slots=4, ttft_ms=50, itl_ms=10,
         note="4 slots, 0.36 s requests"),
    Case("fifo-long-sweep", "fifo", output_tokens=300, slots=32, ttft_ms=50, itl_ms=20,
         fractions=(0.33, 0.66, 1.5), duration_s=8.0, slo_ttft_ms=3000.0,
         note="32 slots, 6.03 s requests, default 8 s levels; 1/3, 2/3 and 1.5 × capacity"),
    Case("fifo-long-near", "fifo", output_tokens=300, slots=32, ttft_ms=50, itl_ms=20,
         fractions=(0.66, 0.9, 1.2), duration_s=8.0, slo_ttft_ms=10000.0, max_level_s=100.0, max_run_s=500.0,
         note="6.03 s requests at 0.66, 0.9 and 1.2 × capacity; TTFT SLO 10 s, so keeping up alone must find the "
              "overload (a 20 % overload of 6 s requests shows only after ~30 s: levels may stretch to 100 s)"),
    Case("fifo-search", "fifo", output_tokens=32, slots=4, ttft_ms=50, itl_ms=10, load="search",
         duration_s=8.0, search_start=0.3, search_max_levels=5, note="load=search (5 levels), 4 slots, 0.36 s requests"),
    Case("fifo-1slot-sweep", "fifo", output_tokens=16, slots=1, ttft_ms=50, itl_ms=10, duration_s=20.0,
         slo_ttft_ms=4000.0, note="one slot, 0.2 s requests (M/D/1: long queues below capacity)"),
    Case("fifo-64slots-sweep", "fifo", output_tokens=100, slots=64, ttft_ms=100, itl_ms=20, duration_s=15.0,
         note="64 slots, 2.08 s requests"),
    Case("sim-small-sweep", "sim", input_tokens=64, output_tokens=32, profile=SIM_SMALL,
         note="simulator, 8 sequences bind"),
    Case("sim-70b-sweep", "sim", input_tokens=256, output_tokens=128, profile=SIM_70B, duration_s=12.0,
         note="simulator sim-70b profile, 256 in / 128 out"),
    Case("sim-1024-sweep", "sim", input_tokens=256, output_tokens=1024, profile=SIM_LONG,
         fractions=(0.33, 0.66, 0.9, 1.5), duration_s=8.0, slo_ttft_ms=5000.0, max_run_s=420.0,
         note="simulator, 1,024-token outputs (~7 s requests), default 8 s levels"),
    Case("sim-small-search", "sim", input_tokens=64, output_tokens=32, profile=SIM_SMALL, load="search",
         duration_s=8.0, note="simulator, load=search"),
)}
QUICK = ("fifo-short-sweep", "fifo-long-sweep")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def sim_capacity_on_paper(p: SimProfile, input_tokens: int, output_tokens: int) -> float:
    """Input: a simulator profile and fixed request lengths. Output: its capacity in req/s, from the step model.

    Written here from docs/simulator.md's engine description, not imported: n
    slots are full; a request holds one for L = ceil(I / budget) + (O − 1)
    steps; so r = n / L requests finish per step (or budget / (I + O − 1) when
    the token budget binds), a step carries r (O − 1) decodes and r I prefill
    tokens on average and lasts T = base + per_seq r (O − 1) + per_prefill r I.
    """
    blocks = p.kv_cache_tokens // p.block_size
    n = min(p.max_num_seqs, blocks // _ceil_div(input_tokens + output_tokens, p.block_size))
    decode = _ceil_div(output_tokens - 1, p.tokens_per_chunk)
    hold_steps = _ceil_div(input_tokens, p.max_num_batched_tokens) + decode
    per_step = min(n / hold_steps, p.max_num_batched_tokens / (input_tokens + decode))
    step_ms = p.step_base_ms + p.step_per_seq_ms * per_step * decode + p.step_per_prefill_token_ms * per_step * input_tokens
    return per_step / (step_ms / 1000.0)


def truth(case: Case) -> tuple[float, str]:
    """Input: a case. Output: its true capacity (req/s) and how it was derived, in words."""
    if case.server == "fifo":
        s = case.ttft_ms / 1000 + (case.output_tokens - 1) * case.itl_ms / 1000
        cap = fifo_server.true_capacity(case.slots, case.ttft_ms / 1000, case.itl_ms / 1000, case.output_tokens)
        return cap, f"{case.slots} slots / ({case.ttft_ms:g} ms + {case.output_tokens - 1} × {case.itl_ms:g} ms = {s:.3f} s)"
    assert case.profile is not None
    cap = sim_capacity_on_paper(case.profile, case.input_tokens, case.output_tokens)
    return cap, f"step model of profile {case.profile.name}, {case.input_tokens} in / {case.output_tokens} out"


# --------------------------------------------------------------------------- running a case


@contextlib.contextmanager
def shared_ray() -> Iterator[None]:
    """Input: none. Output: a context in which one private local Ray (127.0.0.1, 2 CPUs) serves every case.

    Each loadgen run joins it instead of starting and stopping its own, which
    costs 15–30 s per run on a busy 2-core machine; the workers are still
    started and stopped per run.
    """
    from loadgen import cluster

    started = cluster.connect(ClusterConfig(workers=1, num_cpus=2))
    try:
        yield
    finally:
        cluster.shutdown(started)


@contextlib.contextmanager
def target_for(case: Case, log: Any) -> Iterator[tuple[TargetConfig, Optional[Any]]]:
    """Input: a case and a log file. Output: (the target config, the FIFO server process or None), stopped on exit."""
    if case.server == "sim":
        yield TargetConfig(kind="sim", engine="sim", sim=case.profile), None
        return
    server = fifo_server.spawn(case.slots, case.ttft_ms, case.itl_ms, stderr=log)  # its own process: its own CPU and GIL
    try:
        yield TargetConfig(kind="openai", url=server.url, engine="generic", metrics_path=None), server
    finally:
        server.stop()


def config_for(case: Case, target: TargetConfig, capacity: float) -> LoadgenConfig:
    """Input: a case, its target and its true capacity. Output: the loadgen config of the run."""
    rates = [round(f * capacity, 3) for f in case.fractions]
    load = LoadConfig(
        kind=case.load, arrival="poisson", levels=rates if case.load == "sweep" else [1.0],
        duration_s=case.duration_s, warmup_s=case.warmup_s, drain_s=case.drain_s, max_requests=10**5,
        search_start=round(case.search_start * capacity, 3), search_factor=2.0, search_tolerance=0.1,
        search_max_levels=case.search_max_levels,
    )
    if hasattr(load, "max_duration_s"):  # newer loadgen stretches levels to the latency: keep each ≤ 30 s
        load.max_duration_s = max(case.max_level_s, case.duration_s)
    return LoadgenConfig(
        target=target,
        workload=WorkloadConfig(num_requests=4000, input_tokens=LengthDist(mean=case.input_tokens),
                                output_tokens=LengthDist(mean=case.output_tokens)),
        load=load,
        cluster=ClusterConfig(workers=1, num_cpus=2),
        slo=SLOConfig(ttft_ms=case.slo_ttft_ms, tpot_ms=None, e2e_ms=None),
        analysis=AnalysisConfig(plots=False),
        progress=False,
        max_run_s=case.max_run_s,
    )


@dataclass
class Outcome:
    """What loadgen said about one case, next to the truth, and whether that passes the criteria."""

    case: str
    truth_rps: float
    derivation: str
    sat_level: Optional[int] = None
    sat_offered: Optional[float] = None
    sat_achieved: Optional[float] = None
    first_failing_level: Optional[int] = None
    first_failing_offered: Optional[float] = None
    saturation_reason: str = ""
    goodput_rps: Optional[float] = None
    goodput_words: str = ""
    goodput_at_least: Optional[float] = None  # an unbracketed answer: "≥ this" (every level met the attainment)
    best_goodput_rps: float = 0.0
    low_saturated: list[str] = field(default_factory=list)  # "L1 (0.66×)" for levels < 80 % called saturated
    levels: list[dict[str, Any]] = field(default_factory=list)
    server_stats: Optional[dict[str, Any]] = None
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    run_dir: str = ""

    @property
    def passed(self) -> bool:
        """Whether every criterion held."""
        return not self.failures

    def report(self) -> str:
        """Input: none. Output: the table header, this case's row and every level's figures, for an assertion message."""
        lines = [HEADER, row(self), "levels:"]
        lines += ["  " + json.dumps(lv) for lv in self.levels]
        lines += [f"failures: {self.failures}", f"run directory: {self.run_dir}"]
        return "\n".join(lines)


def _attr(obj: Any, *names: str) -> Any:
    """The first of ``names`` that ``obj`` has (the analysis is being reworked; field names may move)."""
    for name in names:
        if obj is not None and hasattr(obj, name):
            return getattr(obj, name)
    return None


def called_saturated(summary: Any, lv: Any) -> bool:
    """Input: a RunSummary and one of its levels. Output: whether loadgen calls that level saturated.

    A level at or past the first failing level is saturated in the report
    (``RunSummary.saturated``), and so is a level that did not keep up; a
    level left unjudged (too short, interrupted) is not.
    """
    if _attr(lv, "judged") is False:
        return False
    return bool(summary.saturated(lv)) or not bool(_attr(lv, "kept_up"))


def level_row(summary: Any, lv: Any, capacity: float) -> dict[str, Any]:
    """Input: a summary, a level, the truth. Output: the level's figures as a small JSON-ready dict."""
    m = lv.metrics

    def r(x: Any) -> Any:
        return round(float(x), 3) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else x

    return {
        "level": lv.level, "offered": r(lv.load), "fraction": r(lv.load / capacity), "achieved": r(m.achieved_rps),
        "goodput": r(m.goodput_rps), "attainment": r(m.attainment), "window_s": r(m.window_s),
        "completed": m.completed, "requests": m.requests, "kept_up": _attr(lv, "kept_up"), "passed": lv.passed,
        "saturated": called_saturated(summary, lv), "e2e_p50_ms": r(m.e2e.p50), "ttft_p99_ms": r(m.ttft.p99),
        "judged": _attr(lv, "judged"), "not_judged": _attr(lv, "not_judged"), "failures": list(lv.failures),
    }


def judge(out: Outcome, case: Case) -> None:
    """Input: an outcome with its figures filled in. Output: none; ``out.failures`` lists every criterion missed."""
    t = out.truth_rps
    # A right verdict can only land within 15 % of T when a level was measured near it (below T).
    near = case.load == "search" or any((1 - TOLERANCE) * t <= lv["offered"] < t for lv in out.levels)
    if out.sat_offered is not None and near and out.sat_offered < (1 - TOLERANCE) * t:
        out.failures.append(f"saturation point {out.sat_offered:.3g} req/s < {1 - TOLERANCE:g} × truth {t:.3g}")
    if out.sat_offered is None:
        out.failures.append(f"no saturation point ({out.saturation_reason})")
    elif out.sat_offered > (1 + TOLERANCE) * t:
        out.failures.append(f"saturation point {out.sat_offered:.3g} req/s > {1 + TOLERANCE:g} × truth {t:.3g}")
    if out.first_failing_offered is None:
        out.failures.append("no level was found failing, though the levels go past the true capacity")
    elif out.first_failing_offered < (1 - TOLERANCE) * t:
        out.failures.append(f"first failing level at {out.first_failing_offered:.3g} req/s < {1 - TOLERANCE:g} × truth {t:.3g}")
    # An unbracketed answer ("≥ X": every level met the attainment) is judged on its X.
    g = out.goodput_rps if out.goodput_rps is not None else out.goodput_at_least
    if g is None:
        out.failures.append(f"no goodput capacity ({out.goodput_words})")
    else:
        if g > (1 + TOLERANCE) * t:
            out.failures.append(f"goodput capacity {g:.3g} req/s > {1 + TOLERANCE:g} × truth {t:.3g}")
        if g > out.best_goodput_rps * (1 + 1e-9):
            out.failures.append(f"goodput capacity {g:.3g} req/s > best achieved goodput {out.best_goodput_rps:.3g}")
        if near and g < (1 - TOLERANCE) * t:
            out.failures.append(f"goodput capacity {g:.3g} req/s < {1 - TOLERANCE:g} × truth {t:.3g}")
    if out.low_saturated:
        out.failures.append("levels below 80 % of capacity called saturated: " + ", ".join(out.low_saturated))


def outcome_of(summary: Any, case: Case, capacity: float, derivation: str) -> Outcome:
    """Input: loadgen's RunSummary of a case's run. Output: the Outcome, judged against the criteria."""
    out = Outcome(case=case.name, truth_rps=capacity, derivation=derivation, run_dir=summary.run_dir)
    by_level = {lv.level: lv for lv in summary.levels}
    sat = summary.saturation
    out.saturation_reason = str(_attr(sat, "reason") or "")
    if sat.level is not None and sat.level in by_level:
        lv = by_level[sat.level]
        out.sat_level, out.sat_offered, out.sat_achieved = lv.level, lv.load, lv.metrics.achieved_rps
    first = sat.first_failing_level
    if first is not None and first in by_level:
        out.first_failing_level, out.first_failing_offered = first, by_level[first].load
    gcap = summary.goodput_capacity
    out.goodput_rps = _attr(gcap, "rate")
    out.goodput_words = str(_attr(gcap, "reason") or "")
    if _attr(gcap, "at_least"):
        out.goodput_at_least = _attr(gcap, "lower_rate")
        out.goodput_words = "≥ (not bracketed) " + out.goodput_words
    out.best_goodput_rps = max((lv.metrics.goodput_rps or 0.0 for lv in summary.levels), default=0.0)
    for lv in sorted(summary.levels, key=lambda lv: lv.load):
        out.levels.append(level_row(summary, lv, capacity))
        if lv.load < LOW_FRACTION * capacity and called_saturated(summary, lv):
            out.low_saturated.append(f"L{lv.level} ({lv.load / capacity:.2f}×)")
    judge(out, case)
    return out


def _server_stats(server: Any) -> Optional[dict[str, Any]]:
    """Input: the FIFO server process or None. Output: its /stats (measured slot hold times) or None."""
    if server is None:
        return None
    root = server.url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/stats", timeout=5) as resp:  # loopback only
        return json.loads(resp.read())


def run_case(case: Case, out_root: Path) -> Outcome:
    """Input: a case and a directory for its run. Output: its Outcome (the run directory is kept for inspection)."""
    capacity, derivation = truth(case)
    run_dir = out_root / case.name
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(run_dir / "loadgen.log", "w", encoding="utf-8") as log, target_for(case, log) as (target, server):
        cfg = config_for(case, target, capacity)
        run(cfg, str(run_dir), console=Console(file=log, width=160))
        stats = _server_stats(server)
    summary = analyze_run(str(run_dir))
    out = outcome_of(summary, case, capacity, derivation)
    out.server_stats = stats
    out.elapsed_s = time.monotonic() - t0
    (run_dir / "validation.json").write_text(json.dumps(dataclasses.asdict(out), indent=2, default=str))
    return out


# --------------------------------------------------------------------------- the table


HEADER = (
    f"{'case':<20} {'truth':>7} {'saturation point':<24} {'1st fail':>8} {'goodput cap':>11} "
    f"{'best gp':>8} {'<80% called sat.':<24} {'verdict':<7} {'time':>6}"
)


def _num(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def row(o: Outcome) -> str:
    """Input: an outcome. Output: its one-line table row."""
    sat = "none" if o.sat_level is None else f"L{o.sat_level} {o.sat_offered:.2f}/{o.sat_achieved:.2f}"
    gp = _num(o.goodput_rps) if o.goodput_at_least is None else f"≥{o.goodput_at_least:.2f}"
    low = ", ".join(o.low_saturated) or "none"
    return (
        f"{o.case:<20} {o.truth_rps:>7.2f} {sat:<24} {_num(o.first_failing_offered):>8} {gp:>11} "
        f"{o.best_goodput_rps:>8.2f} {low:<24} {'PASS' if o.passed else 'FAIL':<7} {o.elapsed_s:>5.0f}s"
    )


def main(argv: Optional[list[str]] = None) -> int:
    """Input: the command line. Output: the exit code (0 when every case passed)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="run only " + " and ".join(QUICK))
    p.add_argument("--cases", default=None, help="comma-separated case names: " + ", ".join(CASES))
    p.add_argument("--out", default=None, help="directory for the run directories (default: a new temporary one)")
    p.add_argument("--json", default=None, help="write every outcome to this JSON file too")
    args = p.parse_args(argv)
    names = QUICK if args.quick else (args.cases.split(",") if args.cases else list(CASES))
    unknown = [n for n in names if n not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    out_root = Path(args.out or tempfile.mkdtemp(prefix="validate_verdicts_"))
    print(f"run directories under {out_root}\n{HEADER}", flush=True)
    outcomes = []
    with shared_ray():
        for name in names:
            outcome = run_case(CASES[name], out_root)
            outcomes.append(outcome)
            print(row(outcome), flush=True)
    for o in outcomes:
        if o.failures:
            print(f"\n{o.case} ({o.derivation}): FAIL\n  " + "\n  ".join(o.failures))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2, default=str))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
