"""The run directory's contract: typed run.json round trip, loud records, one level read alone, one client-bound rule."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from loadgen.analysis import ClientBoundRule, analyze_level, analyze_run
from loadgen.config import ClusterConfig
from loadgen.progress import LevelProgress
from loadgen.rundir import (
    Ledger,
    LevelEntry,
    LoadMode,
    RecordBuffer,
    RecordError,
    RunMeta,
    RunStatus,
    WorkerHealth,
    read_meta,
)
from test_report import make_run


def test_run_json_round_trips_through_the_typed_meta(tmp_path):
    entry = LevelEntry(
        level=2, mode=LoadMode.CONCURRENCY, value=8, ledger=Ledger(planned=3, sent=3, ok=3),
        workers=[WorkerHealth(0, sent=3, loop_lag_ms_p99=1.5)], stopped_early="queue growing",
    )
    RunMeta(run_id="r", status=RunStatus.FAILED, reason="ValueError: boom", levels=[entry]).save(str(tmp_path))
    raw = json.loads((tmp_path / "run.json").read_text())
    assert raw["status"] == "failed" and raw["levels"][0]["mode"] == "concurrency"
    back = read_meta(str(tmp_path))
    assert back is not None and back.status is RunStatus.FAILED and back.reason == "ValueError: boom"
    lv = back.levels[0]
    assert lv.mode is LoadMode.CONCURRENCY and not lv.mode.open_loop
    assert lv.ledger == Ledger(planned=3, sent=3, ok=3) and lv.workers[0].loop_lag_ms_p99 == 1.5


def test_an_old_run_json_with_unknown_keys_still_opens(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({
        "run_id": "old", "status": "complete", "future_key": 1,
        "levels": [{"level": 0, "mode": "rate", "value": 4, "client_bound": False, "workers": [{"worker_id": 0, "extra": 1}]}],
    }))
    meta = read_meta(str(tmp_path))
    assert meta is not None and meta.levels[0].value == 4.0 and meta.levels[0].workers[0].worker_id == 0


def test_a_record_with_an_unknown_field_is_refused_loudly():
    buf = RecordBuffer()
    buf.append({"request_id": "a", "status": "ok"})
    with pytest.raises(RecordError, match="ttft_typo"):
        buf.append({"request_id": "b", "ttft_typo": 5})
    assert len(buf) == 1


def test_one_level_is_judged_alone_as_the_whole_run_judges_it(tmp_path):
    make_run(str(tmp_path))
    whole = analyze_run(str(tmp_path))
    for lv in whole.levels:
        alone = analyze_level(str(tmp_path), lv.level)
        assert alone.metrics == lv.metrics and alone.passed == lv.passed and alone.failures == lv.failures


def test_the_live_warning_applies_the_same_rule_as_the_report():
    rule = ClientBoundRule.of(ClusterConfig(loop_lag_warn_ms=10, schedule_lag_warn_ms=10))
    out = io.StringIO()
    progress = LevelProgress(Console(file=out, width=200), "level 0", 10.0, enabled=False)
    # one 150 ms stall (max) with a quiet p99 is not client-bound; a p99 of 12 ms is
    quiet = {"worker_id": 0, "sent": 10, "loop_lag_ms_p99": 2.0, "loop_lag_max_ms": 150.0, "schedule_lag_ms_p99": 1.0}
    lagging = {"worker_id": 1, "sent": 10, "loop_lag_ms_p99": 1.0, "loop_lag_max_ms": 3.0, "schedule_lag_ms_p99": 12.0}
    progress.warn_client_bound([quiet, lagging], rule, open_loop=True)
    assert "worker 1: schedule lag p99 12.0 ms > 10 ms" in out.getvalue()
    assert "worker 0" not in out.getvalue()
    assert list(rule.judge({0: 2.0}, {1: 12.0})) == [1]


def test_a_run_that_fails_before_any_level_says_failed_and_why(tmp_path):
    from loadgen.config import LoadgenConfig, TargetConfig
    from loadgen.runner import run
    from loadgen.target import TargetError

    cfg = LoadgenConfig(target=TargetConfig(kind="openai", url="http://127.0.0.1:9/v1", connect_timeout_s=1.0), progress=False)
    with pytest.raises(TargetError):
        run(cfg, str(tmp_path), console=Console(file=io.StringIO()))
    meta = read_meta(str(tmp_path))
    assert meta is not None and meta.status is RunStatus.FAILED and "TargetError" in (meta.reason or "")
