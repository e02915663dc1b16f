"""Short run labels: label=, a short directory name, or the multirun overrides that differ; used by comparisons."""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

from rich.console import Console

from loadgen.analysis.labels import differing, overrides, run_labels
from loadgen.report.terminal import render_comparison


def _run(root, name: str, ovs: list[str], label=None) -> SimpleNamespace:
    """A stand-in summary: a directory with Hydra's overrides.yaml, and a config holding ``label``."""
    d = os.path.join(str(root), name)
    os.makedirs(os.path.join(d, ".hydra"))
    with open(os.path.join(d, ".hydra", "overrides.yaml"), "w", encoding="utf-8") as f:
        f.write("".join(f"- {o}\n" for o in ovs))
    return SimpleNamespace(run_dir=d, run_id=name, config={"label": label})


def test_multirun_directories_get_the_overrides_that_differ(tmp_path):
    common = ["load.levels=[6,12,24,36]", "load.duration_s=4"]
    runs = [
        _run(tmp_path, f"{i}_{','.join(common + [f'target={t}', f'workload.output_tokens={n}'])}", common + [f"target={t}", f"workload.output_tokens={n}"])
        for i, (t, n) in enumerate((("sim", 64), ("sim", 128), ("sim-70b", 64)))
    ]
    assert overrides(runs[2].run_dir)["target"] == "sim-70b"
    assert differing([overrides(r.run_dir) for r in runs])[0] == [("target", "sim"), ("workload.output_tokens", "64")]
    assert run_labels(runs) == ["sim output_tokens=64", "sim output_tokens=128", "sim-70b output_tokens=64"]


def test_explicit_label_short_name_and_duplicates(tmp_path):
    a = _run(tmp_path, "baseline", [])
    b = _run(tmp_path / "x", "baseline", [])
    c = _run(tmp_path, "a" * 60, ["target=sim"], label="fast")
    d = _run(tmp_path, "b" * 60, [])
    labels = run_labels([a, b, c, d])
    assert labels[:3] == ["baseline", "baseline #2", "fast"]
    assert len(labels[3]) <= 24 and "…" in labels[3]  # a long name without differing overrides is cut in the middle


def test_terminal_comparison_names_each_label_s_directory():
    from loadgen.analysis.compare import Comparison

    cmp = Comparison(runs=["sim", "sim-70b"], load_axis="req/s")
    buf = io.StringIO()
    render_comparison(cmp, Console(file=buf, width=160), ["/r/0_target=sim", "/r/1_target=sim-70b"])
    assert "run sim: /r/0_target=sim" in buf.getvalue() and "run sim-70b: /r/1_target=sim-70b" in buf.getvalue()


def test_one_run_title_label_uses_its_overrides(tmp_path):
    from loadgen.analysis.labels import run_label

    long = _run(tmp_path, "0_" + "x" * 50, ["target=sim-70b", "workload.output_tokens=128"])
    assert run_label(long) == "sim-70b output_tokens=128"
    assert run_label(_run(tmp_path, "short", ["target=sim"])) == "short"
    assert run_label(_run(tmp_path, "y" * 50, [], label="mine")) == "mine"
