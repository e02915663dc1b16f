"""``loadgen-sim``: run the simulated inference server on its own.

Input: command-line options (a profile from ``conf/target/``, overrides, faults).
Output: an OpenAI-compatible server on host:port until SIGINT/SIGTERM; its first
line on stdout is ``loadgen-sim listening on http://HOST:PORT/v1`` (how
``loadgen.sim.process`` learns the port when it asked for port 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar, get_type_hints

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from loadgen.config import ConfigError, FaultConfig, SimProfile, WorkloadConfig
from loadgen.paths import conf_dir
from loadgen.sim.engine import capacity, check_profile
from loadgen.sim.faults import check_faults
from loadgen.sim.server import SimServer

log = logging.getLogger("loadgen.sim")

T = TypeVar("T", SimProfile, FaultConfig)

_EPILOG = """\
profiles: NAME is conf/target/NAME.yaml (its `sim:` block, and `faults:` if any); a path to a
YAML file works too. Shipped: sim (Llama-3.1-8B on one H100, the default), sim-70b (Llama-3.1-70B
on eight H100s).

overrides (repeatable, KEY is a field of SimProfile or FaultConfig in loadgen/config.py):
  --sim.KEY=VALUE     e.g. --sim.max_num_seqs=128 --sim.prefix_caching=false
  --fault.KEY=VALUE   e.g. --fault.http_error_rate=0.05 --fault.http_error_status=429
                           --fault.reset_rate=0.01 --fault.reset_after_tokens=4
                           --fault.truncate_rate=0.01 --fault.garbage_rate=0.01
                           --fault.stall_rate=0.01 --fault.stall_after_tokens=2 --fault.stall_s=30
                           --fault.accept_delay_s=0.5 --fault.seed=1

The first line on stdout is "loadgen-sim listening on http://HOST:PORT/v1". Prompt tokens are
counted as whitespace-separated words. See docs/simulator.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen-sim",
        description="A simulated OpenAI-compatible LLM inference server: a continuous-batching engine "
        "model (vLLM-like) behind /v1/completions, /v1/chat/completions, /v1/models, /health and /metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--profile", default="sim", help="profile name in conf/target/ or a YAML path (default: %(default)s)"
    )
    parser.add_argument("--profile-json", help="the whole SimProfile as JSON (replaces --profile)")
    parser.add_argument("--faults-json", help="the whole FaultConfig as JSON")
    parser.add_argument("--ground-truth", metavar="FILE.parquet", help="write each request's server-side timings here")
    parser.add_argument(
        "--late-threshold-ms",
        type=float,
        default=5.0,
        help="a step this late is counted as late (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default: %(default)s)")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the parent process goes away (used by start_sim)"
    )
    return parser


def _read_yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def shipped_profiles() -> list[str]:
    """Names of the simulator profiles in ``conf/target/`` (the target options with ``kind: sim``)."""
    found = []
    for path in sorted((conf_dir() / "target").glob("*.yaml")):
        data = _read_yaml(path)
        if isinstance(data, dict) and data.get("kind") == "sim":
            found.append(path.stem)
    return found


def _load_yaml(profile: str) -> dict[str, Any]:
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        path = conf_dir() / "target" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"simulator profile '{profile}' not found ({path}); shipped: {', '.join(shipped_profiles())}."
        )
    data = _read_yaml(path)
    if not isinstance(data, dict) or data.get("kind", "sim") != "sim":
        raise ConfigError(f"{path} is not a simulator profile (expected a mapping with kind: sim and a sim: block).")
    return data


def _build(cls: type[T], base: dict[str, Any], where: str) -> T:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), base))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None


def load_profile(profile: str) -> SimProfile:
    """A checked ``SimProfile`` from a profile name in ``conf/target/`` or a YAML path.

    The YAML is a ``conf/target/`` option (``kind: sim`` and a ``sim:`` block; other
    top-level keys, such as a twin's ``fit:`` account, are ignored) or a bare profile.
    This is how ``target.sim_profile=twin.yaml`` (a ``loadgen-twin fit`` output) is read.
    """
    data = _load_yaml(profile)
    profile_data = data.get("sim", {}) if "kind" in data else data
    return check_profile(_build(SimProfile, profile_data, f"profile {profile}"))


def _override(obj: T, key: str, text: str, flag: str) -> None:
    types = get_type_hints(type(obj))
    if key not in types:
        names = ", ".join(f.name for f in fields(obj))
        raise ConfigError(f"unknown option {flag}.{key}; expected one of: {names}.")
    kind = types[key]
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            value: Any = lowered in ("true", "1", "yes")
        elif kind in (int, float, str):
            value = kind(text)
        else:
            value = json.loads(text)
    except ValueError:
        raise ConfigError(f"option {flag}.{key}={text!r} is not a valid {getattr(kind, '__name__', kind)}.") from None
    setattr(obj, key, value)


def configure(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, SimProfile, FaultConfig]:
    """Parse the command line into options, a checked profile and a checked fault config."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    try:
        data = {} if args.profile_json else _load_yaml(args.profile)
        if args.profile_json:
            profile_data = json.loads(args.profile_json)
        else:
            # a conf/target/ option holds the profile under `sim:`; a bare profile file is the profile itself
            profile_data = data.get("sim", {}) if "kind" in data else data
        fault_data = json.loads(args.faults_json) if args.faults_json else data.get("faults") or {}
        profile = _build(SimProfile, profile_data, f"profile {args.profile}")
        faults = _build(FaultConfig, fault_data, "faults")
        for item in rest:
            flag, _, assignment = item.partition(".")
            key, eq, text = assignment.partition("=")
            if flag not in ("--sim", "--fault") or not eq:
                parser.error(f"unrecognized argument {item!r} (overrides are --sim.KEY=VALUE or --fault.KEY=VALUE)")
            _override(profile if flag == "--sim" else faults, key, text, flag)
        return args, check_profile(profile), check_faults(faults)
    except (ConfigError, json.JSONDecodeError) as exc:
        parser.error(str(exc))


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Set ``stop`` once the parent has gone (we are re-parented), so a killed runner leaks no server."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("parent process %d has gone; stopping", parent)
    stop.set()


async def _serve(args: argparse.Namespace, profile: SimProfile, faults: FaultConfig) -> int:
    server = SimServer(profile, faults, args.ground_truth, late_threshold_s=args.late_threshold_ms / 1000)
    try:
        url = await server.start(args.host, args.port)
    except OSError as exc:
        print(f"loadgen-sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"loadgen-sim listening on {url}", flush=True)
    shape = WorkloadConfig()
    tokens_in, tokens_out = int(shape.input_tokens.mean), int(shape.output_tokens.mean)
    cap = capacity(profile, tokens_in, tokens_out)
    log.info(
        "profile %s: model %s, max_num_seqs %d, step %.2f ms + %.3f ms/seq + %.4f ms/prefill token; "
        "capacity at the default %d in / %d out tokens: %.1f req/s, %.0f output tok/s",
        profile.name,
        profile.model,
        profile.max_num_seqs,
        profile.step_base_ms,
        profile.step_per_seq_ms,
        profile.step_per_prefill_token_ms,
        tokens_in,
        tokens_out,
        cap.requests_per_s,
        cap.output_tokens_per_s,
    )
    if args.exit_with_parent:
        loop.create_task(_watch_parent(os.getppid(), stop))
    await stop.wait()
    log.info("stopping")
    await server.close()
    return 0


def _raise_open_file_limit() -> None:
    """Thousands of concurrent streams need thousands of sockets: lift the soft limit to the hard one."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``loadgen-sim`` console script."""
    args, profile, faults = configure(argv)
    _raise_open_file_limit()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_serve(args, profile, faults))
    return uvloop.run(_serve(args, profile, faults))


if __name__ == "__main__":
    sys.exit(main())
