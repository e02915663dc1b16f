"""Compare a twin's predicted run with the measured run of the same load: the validation table of docs/twin.md.

    python scripts/twin_compare.py MEASURED_RUN PREDICTED_RUN [--ttft-ms 2000 --tpot-ms 100] [--title NAME]

Both runs are analysed by ``loadgen.analysis.analyze_run`` under the same SLOs
(given here, else each run's own). Prints one Markdown row per level: output
tok/s, TTFT p50/p90 and TPOT p50/p90, measured vs predicted with the relative
error, whether each is within the issue's targets (throughput ±10 %, p50
latencies ±20 %), then the saturation point of each run (loadgen's rule) and
whether they agree within one level.
"""

from __future__ import annotations

import argparse
from typing import Optional

from loadgen.analysis import analyze_run
from loadgen.config import SLOConfig


def _err(pred: Optional[float], meas: Optional[float]) -> Optional[float]:
    if pred is None or meas is None or meas == 0:
        return None
    return (pred - meas) / meas


def _cell(meas: Optional[float], pred: Optional[float], target: Optional[float]) -> str:
    if meas is None or pred is None:
        return "— / —"
    e = _err(pred, meas)
    mark = "" if target is None or e is None else (" ✓" if abs(e) <= target else " ✗")
    return f"{meas:,.3g} / {pred:,.3g} ({100 * e:+.0f} %{mark})" if e is not None else f"{meas:,.3g} / {pred:,.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measured")
    parser.add_argument("predicted")
    parser.add_argument("--ttft-ms", type=float)
    parser.add_argument("--tpot-ms", type=float)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    slo = SLOConfig(ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms) if args.ttft_ms or args.tpot_ms else None
    m = analyze_run(args.measured, slo=slo)
    p = analyze_run(args.predicted, slo=slo or m.slo)
    # levels are matched by their configured value (a level run again, longer, keeps its value; the last run counts)
    pred = {lv.value: lv for lv in p.levels}
    meas = {lv.value: lv for lv in m.levels}
    print(f"\n{args.title} (measured / predicted, error)\n")
    print("| level (meas / pred) | load | output tok/s | TTFT p50 ms | TTFT p90 ms | TPOT p50 ms | TPOT p90 ms | requests (meas / pred) |")
    print("|---|---|---|---|---|---|---|---|")
    hits = {"tput": [], "p50": []}
    for lv in meas.values():
        q = pred.get(lv.value)
        if q is None:
            continue
        a, b = lv.metrics, q.metrics
        unit = lv.mode.unit
        print(
            f"| {lv.level} / {q.level} | {lv.value:g} {unit} | {_cell(a.output_tok_s, b.output_tok_s, 0.10)} | {_cell(a.ttft.p50, b.ttft.p50, 0.20)} "
            f"| {_cell(a.ttft.p90, b.ttft.p90, None)} | {_cell(a.tpot.p50, b.tpot.p50, 0.20)} | {_cell(a.tpot.p90, b.tpot.p90, None)} "
            f"| {a.completed} / {b.completed} |"
        )
        for key, x, y, t in (("tput", a.output_tok_s, b.output_tok_s, 0.10), ("p50", a.ttft.p50, b.ttft.p50, 0.20), ("p50", a.tpot.p50, b.tpot.p50, 0.20)):
            e = _err(y, x)
            if e is not None:
                hits[key].append(abs(e) <= t)
    sm, sp = m.saturation, p.saturation
    print(
        f"\nsaturation point (loadgen's rule, SLOs {m.slo.ttft_ms} ms TTFT / {m.slo.tpot_ms} ms TPOT at p{m.slo.percentile:g}): "
        f"measured {sm.load if sm.level is not None else 'none'} (level {sm.level}), predicted {sp.load if sp.level is not None else 'none'} (level {sp.level})"
        + (f" — within one level: {'yes' if sm.level is not None and sp.level is not None and abs(sm.level - sp.level) <= 1 else 'no' if (sm.level is None) != (sp.level is None) or (sm.level is not None and abs(sm.level - sp.level) > 1) else 'both none'}")
    )
    print(
        f"within target: throughput {sum(hits['tput'])}/{len(hits['tput'])} levels (±10 %), "
        f"p50 latencies {sum(hits['p50'])}/{len(hits['p50'])} (±20 %)"
    )


if __name__ == "__main__":
    main()
