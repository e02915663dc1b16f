"""Replay a slice of each real trace against the simulator and compare what was sent with the trace.

For every trace of ``../shared/traces`` (Azure code and conversation, BurstGPT,
Mooncake, ShareGPT), one ``loadgen`` run (``loadgen.runner.run``, simulator
target, one local Ray shared by the runs) replays a 30 s slice. The records are
then compared with the same slice read straight from the file, not through
loadgen's readers: request ids, count, arrival rate, inter-arrival gaps
(two-sample Kolmogorov-Smirnov statistic and percentiles), input lengths
(planned, and as the server counted them from the prompt text), output lengths,
and prefix-cache reuse (the simulator's per-request ground truth). Output: one
table per trace, and the ``loadgen`` command that repeats each run.

    python scripts/compare_replay.py [--traces DIR] [--out DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from loadgen.config import LoadgenConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACES = os.path.join(os.path.dirname(REPO), "shared", "traces")

#: Gap distributions are compared allowing this shift (s): below it, send jitter on a busy machine is
#: noise, and Mooncake's quantized timestamps give many zero gaps that a replay sends a few ms apart.
GAP_TOLERANCE_S = 0.010
#: Mooncake's prefix blocks are this many tokens.
MOONCAKE_BLOCK = 512


# --------------------------------------------------------------------------- statistics


def ks_2samp(a: Sequence[float], b: Sequence[float], tolerance: float = 0.0) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest distance between the two empirical CDFs.

    With ``tolerance`` > 0, either CDF may trail the other by up to that much
    along x before it counts (a Levy-style distance): samples whose sorted values
    differ by at most ``tolerance`` give 0. NaN when either sample is empty.
    """
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    if not len(x) or not len(y):
        return math.nan
    grid = np.concatenate([x, y])

    def cdf(s: np.ndarray, at: np.ndarray) -> np.ndarray:
        return np.searchsorted(s, at, side="right") / len(s)

    x_ahead = np.max(cdf(x, grid) - cdf(y, grid + tolerance))
    y_ahead = np.max(cdf(y, grid) - cdf(x, grid + tolerance))
    return float(max(x_ahead, y_ahead, 0.0))


def ks_exponential(x: Sequence[float], rate: float) -> float:
    """One-sample Kolmogorov-Smirnov statistic of ``x`` against the exponential distribution of ``rate``."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    if not len(v):
        return math.nan
    cdf = 1.0 - np.exp(-rate * v)
    i = np.arange(1, len(v) + 1)
    return float(max(np.max(i / len(v) - cdf), np.max(cdf - (i - 1) / len(v))))


def ks_critical(n: int, m: Optional[int] = None, alpha: float = 0.05) -> float:
    """The asymptotic KS critical value at level ``alpha``: c(alpha) sqrt((n + m) / (n m)) for two samples.

    Without ``m``, the one-sample value c(alpha) / sqrt(n).
    """
    c = math.sqrt(-math.log(alpha / 2) / 2)
    return c / math.sqrt(n) if m is None else c * math.sqrt((n + m) / (n * m))


def gaps(times_s: np.ndarray) -> np.ndarray:
    """Inter-arrival gaps (s) of a set of arrival times, in time order."""
    return np.diff(np.sort(np.asarray(times_s, dtype=np.float64)))


def mean_rate(times_s: np.ndarray) -> float:
    """Requests per second over the span from the first to the last arrival (the traces README's rate)."""
    t = np.asarray(times_s, dtype=np.float64)
    span = float(t.max() - t.min()) if len(t) > 1 else 0.0
    return len(t) / span if span > 0 else math.nan


# --------------------------------------------------------------------------- trace slices


@dataclass
class Slice:
    """The part of a trace a replay should send, read straight from the file."""

    request_ids: list[str]  # loadgen's ids: r<data row> (0-based), s<conversation>-t<turn>
    arrival_s: Optional[np.ndarray]  # offsets from the first kept arrival, after time scaling; None without times
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: Optional[list[list[int]]] = None  # Mooncake prefix blocks that fit the input cap
    poisson_rate: Optional[float] = None  # without times: the rate of the Poisson arrivals the load config drew


def _window(offsets_s: np.ndarray, start_s: float, end_s: float, time_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows with offsets in ``[start_s, end_s)`` and their arrivals from the first of them, scaled."""
    rows = np.flatnonzero((offsets_s >= start_s) & (offsets_s < end_s))
    kept = offsets_s[rows]
    return rows, (kept - kept[0]) * time_scale


def azure_slice(path: str, start_s: float, end_s: float, time_scale: float = 1.0) -> Slice:
    """An Azure LLM inference trace's rows with arrivals in ``[start_s, end_s)`` s of its first row."""
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"TIMESTAMP": pa.string()}))
    stamps = np.array(table.column("TIMESTAMP").to_pylist(), dtype="datetime64[ns]").astype(np.int64)
    rows, arrival = _window((stamps - stamps[0]) / 1e9, start_s, end_s, time_scale)
    return Slice(
        request_ids=[f"r{r:06d}" for r in rows],
        arrival_s=arrival,
        input_tokens=table.column("ContextTokens").to_numpy()[rows],
        output_tokens=table.column("GeneratedTokens").to_numpy()[rows],
    )


def burstgpt_slice(path: str, start_s: float, end_s: float, time_scale: float = 1.0) -> Slice:
    """A BurstGPT trace's rows with arrivals in ``[start_s, end_s)``, failed requests (0 response tokens) dropped."""
    table = pacsv.read_csv(path)
    stamps = table.column("Timestamp").to_numpy().astype(np.float64)
    ok = np.flatnonzero(table.column("Response tokens").to_numpy() > 0)
    rows, arrival = _window(stamps[ok] - stamps[ok][0], start_s, end_s, time_scale)
    rows = ok[rows]
    return Slice(
        request_ids=[f"r{r:06d}" for r in rows],
        arrival_s=arrival,
        input_tokens=table.column("Request tokens").to_numpy()[rows],
        output_tokens=table.column("Response tokens").to_numpy()[rows],
    )


def mooncake_slice(path: str, start_s: float, end_s: float, max_input_tokens: Optional[int] = None) -> Slice:
    """A Mooncake trace's requests with arrivals in ``[start_s, end_s)``, inputs capped at ``max_input_tokens``."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    stamps = np.array([r["timestamp"] for r in rows], dtype=np.float64) / 1e3
    keep, arrival = _window(stamps - stamps[0], start_s, end_s, 1.0)
    cap = max_input_tokens or np.iinfo(np.int64).max
    inputs = np.array([min(rows[k]["input_length"], cap) for k in keep], dtype=np.int64)
    return Slice(
        request_ids=[f"r{k:06d}" for k in keep],
        arrival_s=arrival,
        input_tokens=inputs,
        output_tokens=np.array([rows[k]["output_length"] for k in keep], dtype=np.int64),
        hash_ids=[rows[k]["hash_ids"][: -(-int(n) // MOONCAKE_BLOCK)] for k, n in zip(keep, inputs)],
    )


def sharegpt_slice(path: str, count: int, output_tokens: int, poisson_rate: float) -> Slice:
    """The first ``count`` conversations of a single-turn ShareGPT file, sent at ``poisson_rate`` req/s.

    The file has no replies: outputs are ``output_tokens`` long.
    """
    with open(path) as f:
        conversations = json.load(f)[:count]
    return Slice(
        request_ids=[f"s{i:06d}-t0" for i in range(len(conversations))],
        arrival_s=None,
        # The simulator counts whitespace-separated words, and so does the reader without a tokenizer.
        input_tokens=np.array([len(c["conversations"][0]["value"].split()) for c in conversations]),
        output_tokens=np.full(len(conversations), output_tokens),
        poisson_rate=poisson_rate,
    )


def prefix_reuse_tokens(
    hash_ids: list[list[int]],
    input_tokens: np.ndarray,
    arrival_s: Optional[np.ndarray] = None,
    lead_s: float = 0.0,
    block: int = MOONCAKE_BLOCK,
) -> np.ndarray:
    """Per request (in trace order), the prompt tokens in leading blocks that an earlier request had.

    With ``arrival_s``, only requests that arrived at least ``lead_s`` earlier
    count. With ``lead_s=0`` this is what an unbounded prefix cache that had
    finished every earlier request would serve; a server gets less for requests
    that arrive together, and at least the count for a ``lead_s`` long enough
    for the earlier requests' prefills to have finished.
    """
    times = np.zeros(len(hash_ids)) if arrival_s is None else np.asarray(arrival_s, dtype=np.float64)
    seen: set[tuple[int, ...]] = set()
    out = np.zeros(len(hash_ids), dtype=np.int64)
    j = 0
    for i, (ids, n) in enumerate(zip(hash_ids, input_tokens)):
        while j < i and times[j] <= times[i] - lead_s:
            seen.update(tuple(hash_ids[j][: k + 1]) for k in range(len(hash_ids[j])))
            j += 1
        shared = 0
        while shared < len(ids) and tuple(ids[: shared + 1]) in seen:
            shared += 1
        out[i] = min(shared * block, int(n))
    return out


# --------------------------------------------------------------------------- runs


@dataclass
class Case:
    """One trace replay: the loadgen overrides that run it and the slice they should send."""

    name: str
    overrides: list[str]
    source: Callable[[dict[str, Any]], Slice]  # from the level's run.json entry (ShareGPT needs its count)
    note: str = ""  # printed under the table


def cases(traces: str, window_s: float = 30.0) -> list[Case]:
    """The replays of the shared traces: a ``window_s`` slice of each, a few requests per second."""
    common = [f"load.duration_s={window_s:g}", "load.drain_s=60", "target.sim_ground_truth=true", "progress=false"]
    az_code, az_conv = (os.path.join(traces, f"AzureLLMInferenceTrace_{k}.csv") for k in ("code", "conv"))
    burst = os.path.join(traces, "burstgpt_1_first400.csv")
    moon = os.path.join(traces, "mooncake_trace_first1000.jsonl")
    share = os.path.join(traces, "sharegpt_v3_filtered_500.json")
    # BurstGPT's slice is night-time traffic at ~0.03 req/s: 6000 s of it squeezed 200x into 30 s.
    burst_scale = window_s / 6000.0
    return [
        Case(
            "azure-code",
            ["workload=azure", f"workload.path={az_code}", "workload.start_s=180", f"workload.end_s={180 + window_s:g}",
             "load=trace", *common],
            lambda _: azure_slice(az_code, 180, 180 + window_s),
        ),
        Case(
            "azure-conv",
            ["workload=azure", f"workload.path={az_conv}", "workload.start_s=600", f"workload.end_s={600 + window_s:g}",
             "load=trace", *common],
            lambda _: azure_slice(az_conv, 600, 600 + window_s),
        ),
        Case(
            "burstgpt",
            ["workload=burstgpt", f"workload.path={burst}", "workload.start_s=30000", "workload.end_s=36000",
             f"workload.time_scale={burst_scale:g}", "load=trace", *common],
            lambda _: burstgpt_slice(burst, 30000, 36000, burst_scale),
        ),
        Case(
            "mooncake",
            ["workload=mooncake", f"workload.path={moon}", f"workload.end_s={window_s:g}",
             "workload.max_input_tokens=2048", "load=trace", *common],
            lambda _: mooncake_slice(moon, 0, window_s, 2048),
            note="Prompts capped at 2048 tokens (workload.max_input_tokens; the trace's own p50 is 6,558, and "
            "full prompts would ask the simulated GPU for ~55k prefill tokens/s and this 2-core machine to build "
            "them): the trace column is capped the same way. Ideal cache: tokens in leading 512-token blocks an "
            "earlier request of the slice had.",
        ),
        Case(
            "sharegpt",
            ["workload=sharegpt", f"workload.path={share}", "load=rate", "load.levels=[4]", "load.arrival=poisson",
             *common],
            lambda level: sharegpt_slice(share, level["planned"], 128, 4.0),
            note="ShareGPT has no arrival times: the trace column is a Poisson process at 4 req/s (exponential "
            "gaps), and the sent gaps are also compared with the schedule. This sample is single-turn (no "
            "replies), so outputs are the configured 128 tokens.",
        ),
    ]


def compose(overrides: list[str]) -> LoadgenConfig:
    """The ``LoadgenConfig`` that ``loadgen <overrides>`` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    import loadgen.cli  # noqa: F401 - registers the config schema the primary config extends
    from loadgen.config import to_config
    from loadgen.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        node = hydra_compose("config", overrides=overrides)
    return to_config(OmegaConf.to_container(node, resolve=True))


@dataclass
class Replay:
    """What one run sent (its first level's records and ledger) and what the simulator cached."""

    records: pa.Table
    level: dict[str, Any]
    cached_tokens: dict[str, int]  # request id -> prompt tokens served from the prefix cache


def replay(overrides: list[str], run_dir: str) -> Replay:
    """Run ``loadgen <overrides>`` into ``run_dir`` and read back level 0."""
    from rich.console import Console

    from loadgen.runner import run

    meta = run(compose(overrides), run_dir, console=Console(stderr=True)).to_dict()
    return load_replay(run_dir, meta)


def load_replay(run_dir: str, meta: Optional[dict[str, Any]] = None) -> Replay:
    """Level 0 of a finished run directory."""
    from loadgen.rundir import read_records

    if meta is None:
        with open(os.path.join(run_dir, "run.json")) as f:
            meta = json.load(f)
    records = read_records(run_dir)
    records = records.filter(pc.equal(records.column("level"), 0))
    truth = os.path.join(run_dir, "sim_ground_truth.parquet")
    cached: dict[str, int] = {}
    if os.path.exists(truth):
        t = pq.read_table(truth, columns=["request_id", "cached_tokens"])
        cached = dict(zip(t.column("request_id").to_pylist(), t.column("cached_tokens").to_pylist()))
    return Replay(records=records, level=meta["levels"][0], cached_tokens=cached)


# --------------------------------------------------------------------------- comparison


def _strip_level(ids: list[str]) -> list[str]:
    """Trace request ids from record ids (``L<level>-<id>``)."""
    return [i.split("-", 1)[1] for i in ids]


def _pcts(x: np.ndarray, scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    if not len(x):
        return "-"
    p = np.percentile(np.asarray(x, dtype=np.float64) * scale, [50, 90, 99])
    return " / ".join(fmt.format(v) for v in p)


def _lengths(x: np.ndarray) -> str:
    return f"{_pcts(x)} (mean {np.mean(x):.0f})" if len(x) else "-"


def _ks_pair(a: np.ndarray, b: np.ndarray) -> str:
    return f"{ks_2samp(a, b):.3f} / {ks_2samp(a, b, GAP_TOLERANCE_S):.3f}"


def compare(src: Slice, rep: Replay) -> list[tuple[str, str, str, str]]:
    """Rows ``(metric, trace, planned, achieved)`` comparing a replay's records with its trace slice."""
    rec = rep.records
    ids = _strip_level(rec.column("request_id").to_pylist())
    ok = np.asarray(rec.column("status").to_pylist()) == "ok"
    expected = set(src.request_ids)
    # Arrivals are first turns: a later turn goes out when the turn before it has finished.
    first = rec.column("turn").to_numpy(zero_copy_only=False) == 0
    sched_s = rec.column("scheduled_ns").to_numpy(zero_copy_only=False)[first] / 1e9
    sent_s = rec.column("sent_ns").to_numpy(zero_copy_only=False)[first] / 1e9
    g_sched, g_sent = gaps(sched_s), gaps(sent_s)

    rows = [
        ("requests (recorded: ok)", str(len(src.request_ids)), str(rep.level["ledger"]["planned"]),
         f"{len(ids)}: {int(ok.sum())} ok"),
        ("request ids missing / extra / repeated", "", "",
         f"{len(expected - set(ids))} / {len(set(ids) - expected)} / {len(ids) - len(set(ids))}"),
    ]
    if src.arrival_s is not None:
        g_trace = gaps(src.arrival_s)
        rows += [
            ("mean rate (req/s)", f"{mean_rate(src.arrival_s):.2f}", f"{mean_rate(sched_s):.2f}",
             f"{mean_rate(sent_s):.2f}"),
            ("gap p50 / p90 / p99 (ms)", _pcts(g_trace, 1e3), _pcts(g_sched, 1e3), _pcts(g_sent, 1e3)),
            (f"gap KS D vs trace: exact / 10 ms tolerance (5% crit {ks_critical(len(g_trace), len(g_sent)):.3f})",
             "", _ks_pair(g_trace, g_sched), _ks_pair(g_trace, g_sent)),
        ]
    elif src.poisson_rate:
        rate = src.poisson_rate
        quantiles = -np.log1p(-np.array([0.5, 0.9, 0.99])) / rate * 1e3
        rows += [
            ("mean rate (req/s)", f"{rate:.2f} (Poisson)", f"{mean_rate(sched_s):.2f}", f"{mean_rate(sent_s):.2f}"),
            ("gap p50 / p90 / p99 (ms)", " / ".join(f"{q:.0f}" for q in quantiles), _pcts(g_sched, 1e3),
             _pcts(g_sent, 1e3)),
            (f"gap KS D vs exponential (5% crit {ks_critical(len(g_sent)):.3f})", "",
             f"{ks_exponential(g_sched, rate):.3f}", f"{ks_exponential(g_sent, rate):.3f}"),
            (f"gap KS D vs schedule: exact / 10 ms tolerance (5% crit {ks_critical(len(g_sched), len(g_sent)):.3f})",
             "", "", _ks_pair(g_sched, g_sent)),
        ]
    rows.append(("send lag p50 / p90 / p99 (ms)", "", "", _pcts(sent_s - sched_s, 1e3, "{:.1f}")))

    inp = rec.column("input_tokens").to_numpy(zero_copy_only=False)
    prompt = rec.column("prompt_tokens").to_numpy(zero_copy_only=False)[ok]
    out_exp = rec.column("output_tokens_expected").to_numpy(zero_copy_only=False)
    out = rec.column("output_tokens").to_numpy(zero_copy_only=False)[ok]
    n_ok = int(ok.sum())
    rows += [
        ("input tokens p50 / p90 / p99", _lengths(src.input_tokens), _lengths(inp), _lengths(prompt)),
        ("input KS D vs trace; prompt == planned", "", f"{ks_2samp(src.input_tokens, inp):.3f}",
         f"{ks_2samp(src.input_tokens, prompt):.3f}; {int(np.sum(prompt == inp[ok]))}/{n_ok}"),
        ("output tokens p50 / p90 / p99", _lengths(src.output_tokens), _lengths(out_exp), _lengths(out)),
        ("output KS D vs trace; output == planned", "", f"{ks_2samp(src.output_tokens, out_exp):.3f}",
         f"{ks_2samp(src.output_tokens, out):.3f}; {int(np.sum(out == out_exp[ok]))}/{n_ok}"),
    ]
    if rep.cached_tokens:
        ok_ids = [i for i, good in zip(rec.column("request_id").to_pylist(), ok) if good]
        hits = sum(rep.cached_tokens.get(i, 0) for i in ok_ids)
        ideal = "0% (no shared prefixes)"
        if src.hash_ids is not None:
            reuse = prefix_reuse_tokens(src.hash_ids, src.input_tokens)
            ideal = f"{100 * reuse.sum() / src.input_tokens.sum():.1f}% (ideal cache)"
        share = 100 * hits / max(int(prompt.sum()), 1)
        rows.append(("prefix-cache hits, % of prompt tokens", ideal, "", f"{share:.1f}%"))
    return rows


def render(name: str, command: str, rows: list[tuple[str, str, str, str]], note: str = "") -> str:
    """One trace's comparison as a Markdown table, under its name and the command that reran it."""
    head = ("metric", "trace slice", "planned (schedule)", "achieved (records)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    table = [line(head), sep, *map(line, rows)]
    return "\n".join([f"### {name}", "", "```", command, "```", "", *table, "", *([note, ""] if note else [])])


def main(argv: Optional[list[str]] = None) -> int:
    """Replay every selected trace and print the comparison tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=TRACES, help="directory of the shared traces (default: %(default)s)")
    parser.add_argument("--out", help="directory for the run directories (default: a new temporary one)")
    parser.add_argument("--only", nargs="*", help="replay only these traces (names as in the table headings)")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="compare_replay-")
    selected = [c for c in cases(os.path.abspath(args.traces)) if not args.only or c.name in args.only]
    if not selected:
        parser.error(f"--only matches no trace; known: {', '.join(c.name for c in cases(args.traces))}")

    from loadgen import cluster

    # One local Ray for every replay: the runner joins it and leaves it running.
    started = cluster.connect(compose(selected[0].overrides).cluster)
    print("# " + shlex.join(["python", *sys.argv]) + "\n")
    try:
        for case in selected:
            run_dir = os.path.join(out, case.name)
            t0 = time.monotonic()
            rep = replay(case.overrides, run_dir)
            command = shlex.join(["loadgen", f"hydra.run.dir={run_dir}", *case.overrides])
            rows = compare(case.source(rep.level), rep)
            print(render(case.name, command, rows, case.note), flush=True)
            print(f"({time.monotonic() - t0:.0f} s, run directory {run_dir})\n", flush=True)
    finally:
        cluster.shutdown(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
