"""The ``loadgen`` command: a Hydra app that runs one load test and reports on it.

Input: ``conf/`` plus command-line overrides. Output: a run directory (see
docs/run-directory.md) and, on the terminal, the saturation table and verdicts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from loadgen.config import REDACTED, ConfigError, LoadgenConfig, to_config
from loadgen.paths import conf_dir

ConfigStore.instance().store(name="loadgen_schema", node=LoadgenConfig)

_SECRET_LINE = re.compile(r"(api_key\s*[:=]\s*)(?!null\b|None\b|\*\*\*)(\S.*)$", re.MULTILINE)


def redact_hydra_dir(run_dir: str) -> None:
    """Replace every api_key value in Hydra's saved config and overrides with '***'."""
    hydra_dir = Path(run_dir) / ".hydra"
    for path in hydra_dir.glob("*.yaml"):
        text = path.read_text()
        clean = _SECRET_LINE.sub(lambda m: m.group(1) + REDACTED, text)
        if clean != text:
            path.write_text(clean)


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def app(node: DictConfig) -> Any:
    """Run one load test (Hydra entry point)."""
    from loadgen.runner import run
    from loadgen.sim.process import SimStartError
    from loadgen.target import TargetError
    from loadgen.workload import WorkloadError

    run_dir = HydraConfig.get().runtime.output_dir
    redact_hydra_dir(run_dir)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        cfg = to_config(OmegaConf.to_container(node, resolve=True))
        meta = run(cfg, run_dir, console=console)
    except (ConfigError, TargetError, WorkloadError, SimStartError) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except Exception as exc:
        from loadgen.cluster import user_error

        message = user_error(exc)  # a worker's limit error arrives wrapped in Ray's traceback: show it alone
        if message is None:
            raise
        console.print(f"[red]error:[/] {message}", highlight=False)
        sys.exit(2)
    console.print(f"run directory: {run_dir}  ({meta.status.value})")
    if meta.levels:
        from loadgen.report import report_run

        report_run(run_dir, console=console, plots=cfg.analysis.plots)
    return None


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
