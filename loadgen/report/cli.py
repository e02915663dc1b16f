"""The ``loadgen-report`` command: re-aggregate one run directory, or compare several.

Input: run directories and optional SLO/analysis overrides. Output: the
report files (see ``loadgen.report``) and the tables printed to the terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Optional, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from loadgen.config import AnalysisConfig, ConfigError, LoadgenConfig, SLOConfig, omegaconf_message, validate
from loadgen.report import compare_runs, report_run
from loadgen.rundir import RunDirError, read_meta
from loadgen.rundir.layout import RUN_JSON, records_root, run_file
from loadgen.rundir.meta import dataclass_from_dict

T = TypeVar("T")

DESCRIPTION = """\
Re-aggregate and plot loadgen run directories.

With one DIR: recompute every metric from the run's records, print the
per-level table and the verdicts (saturation point, knee, goodput capacity,
capacity plan, client-bound levels, request ledger), and write summary.json,
summary.parquet, saturation.png, latency_distribution.png, timeline.png and
report.html (into DIR, or --out).

With several DIRs: analyse each under the first run's SLOs and write one
comparison (comparison.{json,parquet,png,html}) with each run's ratio to the
first at every common level and at saturation.
"""

EPILOG = """\
overrides: KEY=VALUE, as for loadgen (slo.* and analysis.* keys; null unsets an SLO);
the older --slo.ttft_ms 500 spelling works too.

examples:
  loadgen-report runs/2026-11-22_01-02-03
  loadgen-report runs/2026-11-22_01-02-03 slo.ttft_ms=500 slo.tpot_ms=50 analysis.target_rate=400
  loadgen-report runs/vllm runs/llamacpp --out runs/vllm-vs-llamacpp
"""

#: A command-line word that is an override (KEY=VALUE) rather than a run directory.
_OVERRIDE = re.compile(r"^\+?[A-Za-z_][\w.]*=")
#: The config sections loadgen-report may change: the rest is fixed by what the run recorded.
_SECTIONS = {"slo": SLOConfig, "analysis": AnalysisConfig}


def _optional_float(text: str) -> Optional[float]:
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every option in --help)."""
    p = argparse.ArgumentParser(
        prog="loadgen-report",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="DIR|KEY=VALUE",
                   help="run directory (holds run.json and records/); KEY=VALUE overrides an slo.* or analysis.* key")
    p.add_argument("--out", metavar="OUT", help="output directory (default: DIR for one run, ./loadgen-comparison for several)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs and report.html (one run)")
    options = (
        ("slo", "ttft_ms", _optional_float, "MS", "time to first token objective, ms"),
        ("slo", "tpot_ms", _optional_float, "MS", "time per output token objective, ms"),
        ("slo", "e2e_ms", _optional_float, "MS", "end-to-end latency objective, ms"),
        ("slo", "attainment", float, "FRACTION", "goodput capacity: fraction of requests that must meet the SLOs (e.g. 0.9)"),
        ("slo", "percentile", float, "P", "saturation check: this percentile of each latency must meet its SLO (e.g. 99)"),
        ("analysis", "saturation_tolerance", float, "FRACTION", "a level keeps up while achieved >= this x offered (e.g. 0.9)"),
        ("analysis", "scaling_efficiency", float, "FRACTION", "closed loop: a level still scales while its gain is >= this fraction of linear"),
        ("analysis", "target_rate", _optional_float, "RPS", "capacity planning: traffic to serve, req/s"),
        ("analysis", "price_per_replica_hour", _optional_float, "USD", "price of one replica-hour, for the cost per 1M output tokens"),
    )
    groups = {
        "slo": p.add_argument_group("SLOs (default: the run's own; 'none' unsets one)"),
        "analysis": p.add_argument_group("analysis (default: the run's own)"),
    }
    for section, name, kind, metavar, help_text in options:
        # SUPPRESS: an option not given stays out of the namespace, so the run's own value stands.
        groups[section].add_argument(
            f"--{section}.{name}", dest=f"{section}_{name}", type=kind, metavar=metavar, help=help_text,
            default=argparse.SUPPRESS,
        )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``loadgen-report``; return the exit status."""
    args = build_parser().parse_intermixed_args(argv)  # DIRs and KEY=VALUE may come after options
    console = Console()
    args.run_dirs, overrides = split_overrides(args.run_dirs)
    if not args.run_dirs:
        console.print("loadgen-report: no run directory given; expected DIR [DIR ...] [KEY=VALUE ...]", style="red", markup=False)
        return 2
    missing = [d for d in args.run_dirs if not os.path.isdir(d)]
    if missing:
        console.print(f"loadgen-report: not a directory: {', '.join(missing)}", style="red", markup=False, soft_wrap=True)
        return 2
    empty = [d for d in args.run_dirs if not os.path.exists(run_file(d, RUN_JSON)) and not os.path.isdir(records_root(d))]
    if empty:
        console.print(f"loadgen-report: no run.json or records/ in {', '.join(empty)} — is this a loadgen run directory?",
                      style="red", markup=False, soft_wrap=True)
        return 2
    try:
        meta = read_meta(args.run_dirs[0])
        config = meta.config if meta is not None else {}
        given = parse_overrides(overrides)
        slo = _apply(SLOConfig, config, args, "slo", given["slo"])
        analysis = _apply(AnalysisConfig, config, args, "analysis", given["analysis"])
        validate(LoadgenConfig(slo=slo, analysis=analysis))
        if len(args.run_dirs) == 1:
            out = args.out or args.run_dirs[0]
            report_run(args.run_dirs[0], out, slo=slo, analysis=analysis, console=console,
                       plots=False if args.no_plots else None)
        else:
            out = args.out or "loadgen-comparison"
            compare_runs(args.run_dirs, out, slo=slo, analysis=analysis, console=console)
    except (ConfigError, RunDirError) as e:
        console.print(f"loadgen-report: {e}", style="red", markup=False, soft_wrap=True)
        return 2
    console.print(f"written to {os.path.abspath(out)}", style="dim", markup=False)
    return 0


def split_overrides(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split the positional words into run directories and KEY=VALUE overrides.

    A word that names an existing directory is a run, even with an '=' in it (Hydra's multirun
    subdirectories are named after their overrides, e.g. ``0_target=sim``).
    """
    dirs, overrides = [], []
    for word in words:
        (overrides if _OVERRIDE.match(word) and not os.path.isdir(word) else dirs).append(word)
    return dirs, overrides


def parse_overrides(overrides: Sequence[str]) -> dict[str, dict]:
    """``slo.ttft_ms=500``-style overrides as {section: {key: value}}; values parsed as loadgen's (YAML).

    Raises ConfigError naming the key for a key outside slo.* and analysis.*.
    """
    given: dict[str, dict] = {name: {} for name in _SECTIONS}
    for item in overrides:
        key = item.lstrip("+").partition("=")[0]
        section, _, name = key.partition(".")
        if section not in _SECTIONS or not name or "." in name:
            raise ConfigError(
                f"config key '{key}' cannot be changed by loadgen-report; expected an slo.* or analysis.* key "
                "(the run's other settings are fixed by what it recorded)."
            )
        parsed = OmegaConf.from_dotlist([item.lstrip("+")])
        given[section][name] = OmegaConf.to_container(parsed)[section][name]
    return given


def _apply(cls: type[T], config: dict, args: argparse.Namespace, section: str, given: Optional[dict] = None) -> T:
    """The run's config section with the options given on the command line applied over it.

    ``--section.key VALUE`` options come first, then ``section.key=VALUE`` overrides; OmegaConf
    checks each value's type, and a wrong one is a ConfigError naming the key.
    """
    options = {f.name: getattr(args, f"{section}_{f.name}") for f in dataclasses.fields(cls) if hasattr(args, f"{section}_{f.name}")}
    base = dataclasses.replace(dataclass_from_dict(cls, config.get(section)), **options)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(base), given or {}))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(omegaconf_message(exc, section)) from None


if __name__ == "__main__":
    sys.exit(main())
