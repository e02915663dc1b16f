"""loadgen-report takes loadgen's KEY=VALUE overrides (slo.*, analysis.*), and its help points at runs/."""

from __future__ import annotations

import json
import os

import pytest

from loadgen.report.cli import build_parser, main, split_overrides
from test_report import make_run


@pytest.fixture
def run_dir(tmp_path) -> str:
    d = str(tmp_path / "run_a")
    make_run(d)
    return d


def _levels(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)["levels"]


def test_key_value_overrides_change_the_slos_like_the_old_options(run_dir):
    assert main([run_dir, "--no-plots", "slo.ttft_ms=1"]) == 0
    assert all(lv["metrics"]["goodput_rps"] == 0 for lv in _levels(run_dir))
    assert main([run_dir, "slo.ttft_ms=null", "slo.tpot_ms=null", "analysis.plots=false"]) == 0
    assert all(lv["metrics"]["attainment"] == 1.0 for lv in _levels(run_dir))
    assert not os.path.exists(os.path.join(run_dir, "report.html"))  # analysis.plots=false as --no-plots
    assert main([run_dir, "--no-plots", "--slo.ttft_ms", "1"]) == 0  # the older spelling still works
    assert all(lv["metrics"]["goodput_rps"] == 0 for lv in _levels(run_dir))


@pytest.mark.parametrize(
    "override, message",
    [
        ("slo.ttft_ms=abc", "config key 'slo.ttft_ms' is 'abc'; expected a number or null"),
        ("slo.attainment=2", "config key 'slo.attainment' is 2.0; expected a fraction in (0, 1]"),
        ("slo.ttft=500", "config key 'slo.ttft' is not an option; expected a key of slo - did you mean 'slo.ttft_ms'?"),
        ("load.duration_s=5", "config key 'load.duration_s' cannot be changed by loadgen-report"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key(run_dir, capsys, override, message):
    assert main([run_dir, "--no-plots", override]) == 2
    out = capsys.readouterr().out
    assert message in out, out
    assert out.strip().count("\n") == 0


def test_a_run_directory_with_an_equals_sign_is_a_run_not_an_override(tmp_path):
    job = tmp_path / "0_target=sim"  # a Hydra multirun job's directory
    job.mkdir()
    assert split_overrides([str(job), "slo.ttft_ms=5"]) == ([str(job)], ["slo.ttft_ms=5"])
    assert main(["slo.ttft_ms=5"]) == 2  # overrides but no run


def test_help_examples_point_at_runs_and_show_key_value_overrides():
    text = build_parser().format_help()
    assert "outputs/" not in text
    assert "loadgen-report runs/" in text and "slo.ttft_ms=500" in text
