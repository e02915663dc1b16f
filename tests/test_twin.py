"""The twin: fitting the engine model to runs, predicting runs offline, fleets, refusals, twin.yaml.

Fast tests fit to runs predicted in virtual time (exact timings, so recovery must be
near exact); the slow ones run the live simulator over HTTP, fit to what the client
measured, and compare predicted with live levels.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from loadgen.analysis import analyze_run
from loadgen.config import SimProfile
from loadgen.rundir import read_meta
from loadgen.sim.cli import configure, load_profile
from loadgen.twin import Fleet, fit_runs, predict, read_twin, write_twin
from loadgen.twin.cli import compose
from loadgen.twin.cli import main as twin_main

KNOWN = SimProfile(
    name="known",
    max_num_seqs=12,
    max_num_batched_tokens=2048,
    kv_cache_tokens=400_000,
    step_base_ms=5.0,
    step_per_seq_ms=0.2,
    step_per_prefill_token_ms=0.03,
    prefix_caching=False,
)

CALIBRATE = ["load=calibrate", "load.levels=[1,2,4,8,24]", "load.duration_s=12", "load.warmup_s=2", "analysis.plots=false"]


def _predict(tmp_path, name, overrides, profile=KNOWN, **kw):
    cfg = compose(overrides + ["analysis.plots=false", "progress=false"])
    out = str(tmp_path / name)
    predict(cfg, profile, out, report=False, **kw)
    return out


def _levels(run_dir):
    """Each level's steady-window metrics."""
    return {lv.level: lv.metrics for lv in analyze_run(run_dir).levels}


def test_fit_recovers_the_parameters_of_a_known_profile(tmp_path):
    run = _predict(tmp_path, "cal", CALIBRATE)
    result = fit_runs([run])
    assert result.ok, result.refusals
    p = result.profile
    assert p.step_base_ms == pytest.approx(KNOWN.step_base_ms, rel=0.02)
    assert p.step_per_seq_ms == pytest.approx(KNOWN.step_per_seq_ms, rel=0.02)
    assert p.step_per_prefill_token_ms == pytest.approx(KNOWN.step_per_prefill_token_ms, rel=0.03)
    assert p.request_overhead_ms == pytest.approx(0.0, abs=0.3)
    assert p.max_num_seqs == KNOWN.max_num_seqs
    assert result.quality["r2"] > 0.99


def test_fit_refuses_what_the_runs_do_not_identify(tmp_path):
    # one level of 4 streams, prompts of one length: no batch curve, no saturation, no prefill variety
    run = _predict(tmp_path, "one", ["load=concurrency", "load.levels=[4]", "load.duration_s=6", "load.warmup_s=1"])
    result = fit_runs([run])
    assert not result.ok
    text = "\n".join(result.refusals)
    assert "max_num_seqs: the runs never saturated the server" in text
    assert "add a level above it" in text and "load=calibrate" in text
    assert "step_per_seq_ms: the decode batch took only" in text
    assert "load.levels=[1,2,4,8,16]" in text
    # the CLI prints the reasons and writes no twin
    out = tmp_path / "twin.yaml"
    assert twin_main(["fit", run, "--out", str(out)]) == 2
    assert not out.exists()
    # a known slot limit is taken instead of the missing saturation
    assert "max_num_seqs" not in "\n".join(fit_runs([run], max_num_seqs=12).refusals)


def test_twin_yaml_round_trips_and_serves_as_a_simulator_profile(tmp_path):
    run = _predict(tmp_path, "cal", CALIBRATE)
    result = fit_runs([run], name="my-twin")
    path = str(tmp_path / "twin.yaml")
    write_twin(path, result.profile, result.account())
    profile, fit = read_twin(path)
    assert profile == result.profile
    assert fit["quality"]["r2"] == pytest.approx(result.quality["r2"], rel=1e-5)
    assert load_profile(path) == profile  # what target.sim_profile=twin.yaml starts
    _, served, _ = configure(["--port", "0", "--profile", path])  # what loadgen-sim --profile twin.yaml serves
    assert served == profile
    cfg = compose([f"target.sim_profile={path}"])
    assert cfg.target.sim_profile == path


def test_predicted_run_directory_is_marked_and_reads_like_a_measured_one(tmp_path):
    run = _predict(tmp_path, "p", ["load=rate", "load.levels=[5,20]", "load.duration_s=8", "load.warmup_s=2"])
    meta = read_meta(run)
    assert meta.target["kind"] == "predicted" and meta.target["predicted"] is True
    assert [lv.ledger.closes for lv in meta.levels] == [True, True]
    levels = _levels(run)
    # an open-loop level below capacity serves what it is offered
    assert levels[0].achieved_rps == pytest.approx(5.0, rel=0.25)
    assert levels[0].output_tok_s > 0 and levels[0].ttft.p50 is not None


def test_the_same_seed_predicts_the_same_run(tmp_path):
    a = _levels(_predict(tmp_path, "a", ["load=rate", "load.levels=[8]", "load.duration_s=6", "load.warmup_s=1"]))
    b = _levels(_predict(tmp_path, "b", ["load=rate", "load.levels=[8]", "load.duration_s=6", "load.warmup_s=1"]))
    assert a[0].ttft.p50 == b[0].ttft.p50 and a[0].output_tok_s == b[0].output_tok_s


def test_a_fleet_of_n_replicas_below_saturation_is_n_times_one(tmp_path):
    one = _levels(_predict(tmp_path, "one", ["load=rate", "load.levels=[4]", "load.duration_s=20", "load.warmup_s=3"]))[0]
    for balancer in ("round-robin", "least-outstanding", "prefix-affine"):
        four = _levels(
            _predict(tmp_path, f"four-{balancer}", ["load=rate", "load.levels=[16]", "load.duration_s=20", "load.warmup_s=3"], replicas=4, balancer=balancer)
        )[0]
        assert four.output_tok_s == pytest.approx(4 * one.output_tok_s, rel=0.1), balancer
        assert four.ttft.p50 == pytest.approx(one.ttft.p50, rel=0.2), balancer
        assert four.tpot.p50 == pytest.approx(one.tpot.p50, rel=0.1), balancer


def test_prefix_affine_keeps_a_shared_prefix_on_one_replica():
    from loadgen.sim.engine import Seq, block_hashes
    from loadgen.twin.fleet import Request

    fleet = Fleet(dataclasses.replace(KNOWN, prefix_caching=True), replicas=4, balancer="prefix-affine")
    shared = [f"w{i}" for i in range(64)]
    picked = set()
    for k in range(8):
        words = shared + [f"u{k}"] * 8
        req = Request(k, Seq(len(words), 4, block_hashes=block_hashes(words, 16)), 0.0)
        fleet.arrive(0.0, req)
        picked.add(req.replica.index)
    assert len(picked) == 1
    rr = Fleet(KNOWN, replicas=4, balancer="round-robin")
    reqs = [Request(k, Seq(10, 4), 0.0) for k in range(8)]
    for r in reqs:
        rr.arrive(0.0, r)
    assert [r.replica.index for r in reqs] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_predicted_runs_compare_with_loadgen_report(tmp_path):
    from loadgen.report import compare_runs

    a = _predict(tmp_path, "a", ["load=rate", "load.levels=[10]", "load.duration_s=6", "load.warmup_s=1"])
    b = _predict(tmp_path, "b", ["load=rate", "load.levels=[10]", "load.duration_s=6", "load.warmup_s=1"], replicas=2)
    comparison = compare_runs([a, b], str(tmp_path / "cmp"))
    assert comparison.runs == ["a", "b"]
    assert os.path.exists(tmp_path / "cmp" / "comparison.json")


# --------------------------------------------------------------------------- live simulator (slow)


def _live(tmp_path, name, overrides):
    from loadgen.runner import run

    cfg = compose(overrides + ["cluster.workers=1", "analysis.plots=false", "progress=false"])
    out = str(tmp_path / name)
    run(cfg, out)
    return out


@pytest.mark.slow
def test_fit_to_a_live_simulator_run_recovers_its_profile_and_predict_matches_it(tmp_path):
    path = str(tmp_path / "known.yaml")
    write_twin(path, KNOWN)
    overrides = [f"target.sim_profile={path}", "load=calibrate", "load.levels=[1,4,24]", "load.duration_s=10", "load.warmup_s=2"]
    live = _live(tmp_path, "live", overrides)
    result = fit_runs([live])
    assert result.ok, result.refusals
    p = result.profile
    # the client sees the steps through HTTP and its own event loop; on the busy 2-core machine the
    # per-sequence cost came out +14 % and -16 % in two runs of these short levels (+4 % for sim-70b's
    # full calibration, docs/twin.md; exact in virtual time, above)
    assert p.step_base_ms == pytest.approx(KNOWN.step_base_ms, rel=0.1)
    assert p.step_per_seq_ms == pytest.approx(KNOWN.step_per_seq_ms, rel=0.25)
    # prefill is seen in few steps (lone prefills, idle TTFTs) and through the client's event loop: on a
    # busy 2-core machine its estimate was off by -25 % and +28 % in two runs (exact in virtual time, above)
    assert p.step_per_prefill_token_ms == pytest.approx(KNOWN.step_per_prefill_token_ms, rel=0.35)
    assert p.max_num_seqs == KNOWN.max_num_seqs
    assert p.kv_cache_tokens == pytest.approx(KNOWN.kv_cache_tokens, rel=0.1)
    # predict the same config, same seed, with the known profile: the same levels within noise
    predicted = _levels(_predict(tmp_path, "pred", overrides))
    measured = _levels(live)
    lag = {lv.level: max(w.loop_lag_ms_p99 for w in lv.workers) for lv in read_meta(live).levels}
    for k, m in measured.items():
        q = predicted[k]
        assert q.output_tok_s == pytest.approx(m.output_tok_s, rel=0.1), k
        assert q.tpot.p50 == pytest.approx(m.tpot.p50, rel=0.1), k
        # the live TTFT also holds HTTP and the client's event loop (its lag, measured, on a busy machine
        # tens of ms): the engine model has neither
        assert q.ttft.p50 == pytest.approx(m.ttft.p50, rel=0.25, abs=5.0 + lag[k]), k


def test_plan_finds_the_fewest_replicas_that_pass(tmp_path):
    from loadgen.twin.plan import plan_replicas

    # KNOWN serves ~11.6 req/s of 256 in / 128 out per replica: 20 req/s needs two
    cfg = compose(["load=rate", "load.levels=[20]", "load.duration_s=15", "load.warmup_s=3", "analysis.plots=false", "progress=false"])
    answer = plan_replicas(cfg, KNOWN, max_replicas=8)
    assert answer.replicas == 2
    assert answer.tried[1][0] is False and "level 0" in answer.tried[1][1]
    assert answer.tried[2][0] is True
