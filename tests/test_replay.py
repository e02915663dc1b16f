"""End-to-end trace replay against the simulator: the records match the trace slice they replayed.

The slices are read straight from the shared trace files by ``scripts/compare_replay.py``
(not through loadgen's readers), so these tests check the whole path: reader, reshape,
schedule, sharding, workers, client and simulator.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

# A local Ray stays on 127.0.0.1 only when this is set before ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np
import pytest

from loadgen import cluster
from loadgen.config import ClusterConfig
from traces import TRACES, needs_traces

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AZURE_CONV = str(TRACES / "AzureLLMInferenceTrace_conv.csv")
MOONCAKE = str(TRACES / "mooncake_trace_first1000.jsonl")


def _script():
    spec = importlib.util.spec_from_file_location("compare_replay", os.path.join(REPO, "scripts", "compare_replay.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cr = _script()

COMMON = ["load=trace", "load.duration_s=15", "load.drain_s=60", "target.sim_ground_truth=true", "progress=false"]
#: name -> (loadgen overrides, the same slice read from the file): 15 s of each trace.
SLICES = {
    "azure-conv": (
        ["workload=azure", f"workload.path={AZURE_CONV}", "workload.start_s=180", "workload.end_s=195", *COMMON],
        lambda: cr.azure_slice(AZURE_CONV, 180, 195),
    ),
    "mooncake": (
        # Prompts capped so the simulator and this 2-core machine keep up (the trace's p50 is 6,558).
        ["workload=mooncake", f"workload.path={MOONCAKE}", "workload.end_s=15", "workload.max_input_tokens=2048",
         *COMMON],
        lambda: cr.mooncake_slice(MOONCAKE, 0, 15, 2048),
    ),
}


# --------------------------------------------------------------------------- the statistics


def test_ks_statistic_is_the_largest_distance_between_the_empirical_cdfs():
    assert cr.ks_2samp([1, 2, 3], [4, 5, 6]) == 1.0
    assert cr.ks_2samp([3, 1, 2], [1, 2, 3]) == 0.0
    # At x=2 the first CDF is 2/4, the second 0; at x=4 they are 1 and 2/4.
    assert cr.ks_2samp([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    # Unequal sizes: at x=1 the CDFs are 1/2 and 1/4; at x=2, 1 and 2/4.
    assert cr.ks_2samp([1, 2], [1, 2, 3, 4]) == pytest.approx(0.5)
    assert np.isnan(cr.ks_2samp([], [1.0]))


def test_ks_tolerance_forgives_shifts_up_to_it_only():
    zeros, jittered = [0.0, 0.0, 0.0, 3.05], [0.001, 0.003, 0.004, 3.052]
    assert cr.ks_2samp(zeros, jittered) == pytest.approx(0.75)
    assert cr.ks_2samp(zeros, jittered, tolerance=0.010) == 0.0
    # One of four moved by 20 ms: a quarter of the mass is beyond the tolerance.
    assert cr.ks_2samp(zeros, [0.0, 0.02, 0.0, 3.05], tolerance=0.010) == pytest.approx(0.25)
    # No grid: values on either side of a multiple of the tolerance are still close.
    assert cr.ks_2samp([0.015] * 4, [0.0149999] * 4, tolerance=0.010) == 0.0


def test_ks_critical_value_at_5_percent():
    # c(0.05) = sqrt(-ln(0.025) / 2) = 1.358
    assert cr.ks_critical(100, 100) == pytest.approx(1.358 * np.sqrt(2 / 100), rel=1e-3)
    assert cr.ks_critical(50, 200) == pytest.approx(1.358 * np.sqrt(250 / 10_000), rel=1e-3)


def test_ks_against_the_exponential_distribution():
    rate = 4.0
    assert cr.ks_exponential([np.log(2) / rate], rate) == pytest.approx(0.5)
    # The quantiles at (i - 1/2) / n are as close as n points get: D = 1 / (2n).
    n = 40
    points = -np.log1p(-(np.arange(n) + 0.5) / n) / rate
    assert cr.ks_exponential(points, rate) == pytest.approx(1 / (2 * n))
    # Against twice the rate: max over x of exp(-rate x) - exp(-2 rate x) = 1/4, give or take 1 / (2n).
    assert cr.ks_exponential(points, 2 * rate) == pytest.approx(0.25, abs=1 / (2 * n))
    assert cr.ks_critical(100) == pytest.approx(0.1358, rel=1e-3)


def test_prefix_reuse_counts_leading_blocks_seen_earlier():
    ids = [[1, 2, 3], [1, 2, 4], [5], [1, 2, 3], [2]]
    tokens = np.array([1500, 1200, 100, 1300, 512])
    # The 4th has all three blocks of the 1st but only 1300 tokens; [2] alone is not a prefix seen.
    assert cr.prefix_reuse_tokens(ids, tokens).tolist() == [0, 1024, 0, 1300, 0]
    # Counting only requests at least 1 s earlier: the 2nd arrived with the 1st.
    arrival = np.array([0.0, 0.0, 3.0, 3.0, 6.0])
    assert cr.prefix_reuse_tokens(ids, tokens, arrival, lead_s=1.0).tolist() == [0, 0, 0, 1300, 0]


@needs_traces
def test_the_slices_are_read_from_the_files_as_the_readme_describes():
    conv = cr.azure_slice(AZURE_CONV, 0, 3600)
    assert len(conv.request_ids) == 19_366
    assert cr.mean_rate(conv.arrival_s) == pytest.approx(5.530, abs=0.001)
    moon = cr.mooncake_slice(MOONCAKE, 0, 1000)
    assert len(moon.request_ids) == 1000 and moon.arrival_s[-1] == pytest.approx(177.098)
    assert np.percentile(moon.input_tokens, 50) == 6558


# --------------------------------------------------------------------------- replays


@pytest.fixture(scope="module")
def ray_local():
    """One private local Ray for every replay of the module (the runner joins it and leaves it up)."""
    started = cluster.connect(ClusterConfig(kind="local", num_cpus=2))
    yield
    cluster.shutdown(started)


@pytest.fixture(scope="module")
def replays(ray_local, tmp_path_factory):
    """Each slice of SLICES replayed once: name -> (trace slice, replay)."""
    out = {}
    for name, (overrides, source) in SLICES.items():
        run_dir = str(tmp_path_factory.mktemp(name))
        out[name] = (source(), cr.replay(overrides, run_dir))
    return out


def _column(rep, name: str) -> np.ndarray:
    return rep.records.column(name).to_numpy(zero_copy_only=False)


@needs_traces
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLICES))
def test_every_request_of_the_slice_is_recorded_once_and_ok(replays, name):
    src, rep = replays[name]
    ids = [i.removeprefix("L0-") for i in rep.records.column("request_id").to_pylist()]
    assert sorted(ids) == sorted(src.request_ids)
    assert set(rep.records.column("status").to_pylist()) == {"ok"}
    ledger = rep.level["ledger"]
    assert ledger["planned"] == ledger["sent"] == ledger["ok"] == len(src.request_ids)


@needs_traces
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLICES))
def test_achieved_arrivals_match_the_trace(replays, name):
    src, rep = replays[name]
    trace_gaps = cr.gaps(src.arrival_s)
    sent_gaps = cr.gaps(_column(rep, "sent_ns") / 1e9)
    # A faithful replay sends the trace's own instants plus a send lag of a few ms, so with a 10 ms
    # tolerance its gaps are the trace's and D is near 0 (<= 0.015 measured). The 5 % critical value
    # (0.20 for Azure's ~90 gaps) is where two samples stop passing for one distribution: it leaves
    # room for ~18 gaps moved by stalls of this shared machine, while a wrong time scale, dropped or
    # bunched sends (everything at once) push D towards 1.
    bound = cr.ks_critical(len(trace_gaps), len(sent_gaps))
    assert cr.ks_2samp(trace_gaps, sent_gaps, cr.GAP_TOLERANCE_S) < bound
    assert cr.mean_rate(_column(rep, "sent_ns") / 1e9) == pytest.approx(cr.mean_rate(src.arrival_s), rel=0.1)


@needs_traces
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLICES))
def test_the_server_saw_the_trace_lengths(replays, name):
    src, rep = replays[name]
    trace_in = dict(zip(src.request_ids, src.input_tokens.tolist()))
    trace_out = dict(zip(src.request_ids, src.output_tokens.tolist()))
    ids = [i.removeprefix("L0-") for i in rep.records.column("request_id").to_pylist()]
    assert _column(rep, "input_tokens").tolist() == [trace_in[i] for i in ids]
    assert _column(rep, "output_tokens_expected").tolist() == [trace_out[i] for i in ids]
    # The simulator counts the prompt's whitespace-separated words; loadgen builds prompts to that count.
    assert (_column(rep, "prompt_tokens") == _column(rep, "input_tokens")).all()
    assert (_column(rep, "output_tokens") == _column(rep, "output_tokens_expected")).all()


@needs_traces
@pytest.mark.slow
def test_mooncake_shared_blocks_hit_the_servers_prefix_cache(replays):
    src, rep = replays["mooncake"]
    hits = sum(rep.cached_tokens[i] for i in rep.records.column("request_id").to_pylist())
    # At most: everything an earlier request of the slice had. At least (half, for slack): what
    # requests of earlier 3-s timestamp groups had, whose prefills were long done.
    ideal = int(cr.prefix_reuse_tokens(src.hash_ids, src.input_tokens).sum())
    settled = int(cr.prefix_reuse_tokens(src.hash_ids, src.input_tokens, src.arrival_s, lead_s=1.0).sum())
    assert settled > 0.3 * src.input_tokens.sum()
    assert 0.5 * settled <= hits <= ideal
    # Azure prompts share nothing (they differ from their first words), so nothing hits.
    _, azure = replays["azure-conv"]
    assert sum(azure.cached_tokens[i] for i in azure.records.column("request_id").to_pylist()) == 0


# --------------------------------------------------------------------------- sessions


def _conversations() -> list[dict]:
    """3 conversations of 3 turns; turn t of conversation c has human text of 5+c+t words, replies 4+t."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    out = []
    for c in range(3):
        msgs = []
        for t in range(3):
            msgs.append({"from": "human", "value": " ".join(words[: 5 + c + t])})
            msgs.append({"from": "gpt", "value": " ".join(reversed(words[: 4 + t]))})
        out.append({"id": f"conv{c}", "conversations": msgs})
    return out


@pytest.mark.slow
def test_session_turns_stay_on_one_worker_in_order(ray_local, tmp_path):
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(_conversations()))
    think_s = 0.2
    overrides = [
        "workload=sharegpt", f"workload.path={path}", f"load.think_time_s={think_s}", "target.api=chat",
        # 1.5 sessions/s for 2 s: exactly the 3 conversations, dealt to the 2 workers.
        "load=rate", "load.levels=[1.5]", "load.arrival=constant", "load.duration_s=2", "load.warmup_s=0",
        "load.drain_s=60", "progress=false",
    ]
    rep = cr.replay(overrides, str(tmp_path / "run"))
    rows = sorted(rep.records.to_pylist(), key=lambda r: (r["session_id"], r["turn"]))
    assert len(rows) == 9 and {r["status"] for r in rows} == {"ok"}
    assert {r["worker_id"] for r in rows} == {0, 1}
    for c in range(3):
        turns = [r for r in rows if r["session_id"] == f"s{c:06d}"]
        assert [r["turn"] for r in turns] == [0, 1, 2]
        assert len({r["worker_id"] for r in turns}) == 1
        # Turn t's prompt is every earlier message plus its own human text, word for word.
        human = [5 + c + t for t in range(3)]
        reply = [4 + t for t in range(3)]
        expected = [sum(human[:t]) + sum(reply[:t]) + human[t] for t in range(3)]
        assert [r["prompt_tokens"] for r in turns] == expected
        assert [r["output_tokens"] for r in turns] == reply
        for prev, cur in zip(turns, turns[1:]):
            assert cur["sent_ns"] >= prev["end_ns"] + think_s * 1e9 * 0.95
