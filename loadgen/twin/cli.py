"""``loadgen-twin``: fit a twin to measured runs, or predict a run with it offline.

Input: ``loadgen-twin fit RUN_DIR... --out twin.yaml`` (run directories against one
engine), ``loadgen-twin predict twin.yaml [--replicas N] [--balancer B] [--out DIR]
[loadgen overrides...]`` (Hydra overrides, as ``loadgen`` takes them), or
``loadgen-twin plan twin.yaml [overrides...]``. Output: the fit's account on the
terminal and twin.yaml (exit 2 with the reasons when a parameter is not
identified), a predicted run directory with its report, or the fewest replicas
that serve the load at its SLOs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Optional, Sequence

from rich.console import Console

from loadgen.config import ConfigError, LoadgenConfig, schema_node, to_config
from loadgen.twin.fit import FitError, fit_runs
from loadgen.twin.fleet import BALANCERS
from loadgen.twin.profile import read_twin, write_twin


def compose(overrides: Sequence[str]) -> LoadgenConfig:
    """The validated config ``loadgen`` would run with these Hydra overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from loadgen.paths import conf_dir

    # conf/config.yaml's defaults start with the typed schema, registered as `loadgen` registers it
    ConfigStore.instance().store(name="loadgen_schema", node=schema_node())  # dict options take keys without +
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        node = hydra_compose(config_name="config", overrides=list(overrides))
    return to_config(OmegaConf.to_container(node, resolve=True))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadgen-twin", description="A calibrated twin of an inference engine (docs/twin.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a twin profile to run directories of one engine")
    f.add_argument("runs", nargs="+", metavar="RUN_DIR")
    f.add_argument("--out", default="twin.yaml", help="where to write the twin (default: %(default)s)")
    f.add_argument("--name", help="the profile's name (default: twin-ENGINE)")
    f.add_argument("--max-num-seqs", type=int, help="the server's slot limit, when the runs never reached it")
    f.add_argument("--kv-cache-tokens", type=int, help="the server's KV cache size in tokens, when the runs cannot show it")
    f.add_argument("--context-term", action="store_true", help="also estimate a decode cost per context token (reported, not modelled)")
    p = sub.add_parser("predict", help="predict a run with a twin, offline, in virtual time")
    p.add_argument("twin", help="twin.yaml (or any simulator profile file)")
    p.add_argument("--replicas", type=int, default=1, help="replicas behind the balancer (default: %(default)s)")
    p.add_argument("--balancer", default="round-robin", choices=BALANCERS, help="(default: %(default)s)")
    p.add_argument("--out", help="the run directory (default: runs/predicted_<date>_<time>)")
    p.add_argument("overrides", nargs="*", help="loadgen config overrides, e.g. load=concurrency 'load.levels=[1,8]'")
    c = sub.add_parser("plan", help="the fewest replicas of the twin that pass every level of a load at its SLOs")
    c.add_argument("twin")
    c.add_argument("--balancer", default="least-outstanding", choices=BALANCERS, help="(default: %(default)s)")
    c.add_argument("--max-replicas", type=int, default=1024, help="(default: %(default)s)")
    c.add_argument("overrides", nargs="*", help="loadgen config overrides: the traffic and the SLOs, e.g. load=trace slo=strict")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``loadgen-twin`` console script."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and (args.command == "fit" or any(r.startswith("-") for r in rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command != "fit":
        args.overrides = list(args.overrides) + rest
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        if args.command == "fit":
            result = fit_runs(
                args.runs, name=args.name, max_num_seqs=args.max_num_seqs, kv_cache_tokens=args.kv_cache_tokens,
                context_term=args.context_term,
            )
            console.print(result.render(), highlight=False, markup=False)
            if not result.ok:
                console.print(f"[red]no twin written:[/] {len(result.refusals)} parameter(s) not identified (above)", highlight=False)
                return 2
            write_twin(args.out, result.profile, result.account())
            console.print(f"twin: {args.out}", highlight=False)
            return 0
        profile, _ = read_twin(args.twin)
        cfg = compose(args.overrides)
        if args.command == "plan":
            from loadgen.twin.plan import plan_replicas

            answer = plan_replicas(cfg, profile, balancer=args.balancer, max_replicas=args.max_replicas)
            console.print(answer.render(), highlight=False, markup=False)
            return 0 if answer.replicas else 1
        out = args.out or os.path.join("runs", "predicted_" + dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        from loadgen.twin.predict import predict

        predict(cfg, profile, out, replicas=args.replicas, balancer=args.balancer, twin_path=os.path.abspath(args.twin), console=console)
        console.print(f"run directory: {out}  (predicted)", highlight=False)
        return 0
    except (ConfigError, FitError, ValueError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
