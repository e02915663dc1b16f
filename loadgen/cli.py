"""The ``loadgen`` command: a Hydra app that runs one load test and reports on it.

Input: ``conf/`` plus command-line overrides. Output: a run directory (see
docs/run-directory.md) and, on the terminal, the saturation table and verdicts.

Hydra as its users expect it, with loadgen's one-line errors: the dict options take new
keys without '+', ``--help`` lists every key with its description, every user error
(a bad key, type, value or group option) is one line without a traceback unless
HYDRA_FULL_ERROR=1, and a refused config leaves no run directory behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from loadgen.config import (
    REDACTED,
    ConfigError,
    LoadgenConfig,
    field_help,
    omegaconf_message,
    schema_node,
    to_config,
)
from loadgen.paths import conf_dir

ConfigStore.instance().store(name="loadgen_schema", node=schema_node())

_SECRET_LINE = re.compile(r"(api_key\s*[:=]\s*)(?!null\b|None\b|\*\*\*)(\S.*)$", re.MULTILINE)

#: What Hydra writes into a job's directory before the app runs; a refused config removes only these.
_HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".hydra", "cli.log")

#: One example per section of `loadgen --help` (tests/test_docs_commands.py composes each).
SECTION_EXAMPLES = {
    "target": "target=vllm target.url=http://127.0.0.1:8000/v1 target.headers.X-Team=a target.extra_body.top_p=0.9",
    "workload": "workload.input_tokens=512 workload.output_tokens.dist=uniform workload.output_tokens.min=16 workload.output_tokens.max=256",
    "load": "load=concurrency load.levels=[1,8,64] load.duration_s=30",
    "cluster": "cluster=ray cluster.address=10.0.0.1:6379 cluster.workers=32",
    "slo": "slo=strict slo.ttft_ms=500 slo.e2e_ms=null",
    "analysis": "analysis.target_rate=400 analysis.price_per_replica_hour=2.5",
}


def redact_hydra_dir(run_dir: str) -> None:
    """Replace every api_key value in Hydra's saved config and overrides with '***'."""
    hydra_dir = Path(run_dir) / ".hydra"
    for path in hydra_dir.glob("*.yaml"):
        text = path.read_text()
        clean = _SECRET_LINE.sub(lambda m: m.group(1) + REDACTED, text)
        if clean != text:
            path.write_text(clean)


# --------------------------------------------------------------------------- help


def _value(v: Any) -> str:
    """A config value as it is written on the command line (null, true, [1,2], {a: b})."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def _key_lines(cls: type, values: Any, prefix: str) -> list[str]:
    """``KEY=VALUE  description`` for every option of dataclass ``cls``; nested groups follow their parent's keys."""
    docs = field_help(cls)
    lines: list[str] = []
    nested: list[str] = []
    for f in fields(cls):
        value = values.get(f.name) if isinstance(values, dict) else None
        default = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(default) and isinstance(value, dict):
            head = (default.__doc__ or "").strip().splitlines()[0]
            nested += ["", f"  {prefix}{f.name}: {docs.get(f.name) or head}"]
            nested += _key_lines(type(default), value, f"{prefix}{f.name}.")
            continue
        lines.append(f"  {prefix}{f.name}={_value(value)}".ljust(40) + f"  {docs.get(f.name, '')}".rstrip())
    return lines + nested


def help_text(root: Any) -> str:
    """The key reference of ``loadgen --help``: every option by section, its current value and description.

    Input: the composed config (Hydra's, so the values include the command line's overrides).
    Output: text for the help template; '$' is doubled because Hydra fills the template with
    ``string.Template``.
    """
    values = OmegaConf.to_container(root, resolve=False, throw_on_missing=False)
    assert isinstance(values, dict)
    out: list[str] = []
    top: list[str] = []
    docs = field_help(LoadgenConfig)
    for f in fields(LoadgenConfig):
        cls = f.default_factory if callable(f.default_factory) and is_dataclass(f.default_factory) else None
        if cls is None:
            top += _key_lines_for(f.name, values.get(f.name), docs.get(f.name, ""))
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        out += ["", f"== {f.name}: {doc} =="]
        out += _key_lines(cls, values.get(f.name) or {}, f"{f.name}.")
        if f.name in SECTION_EXAMPLES:
            out.append(f"  e.g. loadgen {SECTION_EXAMPLES[f.name]}")
    out += ["", "== the run as a whole ==", *top]
    return "\n".join(out).replace("$", "$$")


def _key_lines_for(name: str, value: Any, doc: str) -> list[str]:
    return [f"  {name}={_value(value)}".ljust(40) + f"  {doc}".rstrip()]


def _help_resolver(*, _root_: Any) -> str:
    return help_text(OmegaConf.masked_copy(_root_, [f.name for f in fields(LoadgenConfig) if f.name in _root_]))


OmegaConf.register_new_resolver("loadgen_help", _help_resolver, replace=True)


# --------------------------------------------------------------------------- validation before the run directory


class ConfigRefused(BaseException):
    """A config refused before the run directory was made; ``error`` is the ConfigError.

    A BaseException because Hydra turns an Exception raised in a callback into a warning and
    goes on with the run; ``main`` catches this and prints the error in one line.
    """

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


class ValidateFirst(Callback):
    """A Hydra callback that refuses a bad config before Hydra creates the run directory.

    Hydra makes the job's directory (and .hydra/, cli.log) before it calls the app; in a
    single run ``on_run_start`` comes before that, so a config refused here leaves nothing.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validate the composed config (without Hydra's own node); raise ConfigRefused naming the key."""
        try:
            to_config(_without_hydra(config))
        except ConfigError as exc:
            raise ConfigRefused(exc) from exc


def _without_hydra(config: DictConfig) -> Any:
    keys = [k for k in config.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(config, keys), resolve=True)


def remove_hydra_leftovers(run_dir: str) -> bool:
    """Remove what Hydra wrote for a refused job: its directory, then the sweep's, when nothing else is in them.

    Input: a job's output directory. Output: True when it was removed. Used when a multirun
    job's config is refused (Hydra creates the job's directory, and the sweep's with its
    multirun.yaml, before the app sees the config); emptied parents inside the working
    directory (runs/) go too.
    """
    job = Path(run_dir)
    if not _remove_if_only(job, _HYDRA_FILES):
        return False
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    sweep_dir = Path(hydra_cfg.sweep.dir) if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN else None
    if sweep_dir is not None and job.parent.resolve() == sweep_dir.resolve():
        _remove_if_only(sweep_dir, ("multirun.yaml",))
    cwd, parent = Path.cwd().resolve(), job.parent.resolve()
    while parent != cwd and cwd in parent.parents:
        if parent.is_dir():
            if any(parent.iterdir()):
                break
            parent.rmdir()
        parent = parent.parent
    return True


def _remove_if_only(root: Path, names: tuple[str, ...]) -> bool:
    """Remove directory ``root`` when it holds nothing but ``names`` (relative paths; cli.log only if empty)."""
    if not root.is_dir():
        return False
    found = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    log = root / "cli.log"
    if not found <= set(names) or (log.exists() and log.stat().st_size > 0):
        return False
    shutil.rmtree(root)
    return True


def _mark_failed(run_dir: str, exc: BaseException) -> None:
    """Make run.json say ``failed`` with the reason when the run ended on an error it did not record."""
    from loadgen.rundir import read_meta
    from loadgen.rundir.meta import RunStatus

    try:
        meta = read_meta(run_dir)
    except Exception:  # an unreadable run.json stays as it is
        return
    if meta is None or meta.status != RunStatus.RUNNING:
        return
    meta.status = RunStatus.FAILED
    meta.reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    meta.save(run_dir)


# --------------------------------------------------------------------------- the app


#: HYDRA_FULL_ERROR as the user set it (None: main() did not run); main() sets it to 1 for Hydra.
_user_full_error: Optional[str] = None


@contextlib.contextmanager
def _users_full_error() -> Iterator[None]:
    """While the run goes, HYDRA_FULL_ERROR is the user's own (the cluster and the workers read it too)."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    if _user_full_error is not None:
        _set_env("HYDRA_FULL_ERROR", _user_full_error or None)
    try:
        yield
    finally:
        _set_env("HYDRA_FULL_ERROR", saved)


def _set_env(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def app(node: DictConfig) -> Any:
    """Run one load test (Hydra entry point)."""
    with _users_full_error():
        _run_app(node)
    return None


def _run_app(node: DictConfig) -> None:
    """The app's body: validate, run, report; user errors print one line and exit 2."""
    from loadgen.runner import run
    from loadgen.sim.process import SimStartError
    from loadgen.target import TargetError
    from loadgen.workload import WorkloadError

    run_dir = HydraConfig.get().runtime.output_dir
    redact_hydra_dir(run_dir)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        cfg = to_config(OmegaConf.to_container(node, resolve=True))
    except ConfigError as exc:
        remove_hydra_leftovers(run_dir)  # a multirun job: Hydra made its directory before we saw the config
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    try:
        meta = run(cfg, run_dir, console=console)
    except (ConfigError, TargetError, WorkloadError, SimStartError) as exc:
        _mark_failed(run_dir, exc)
        console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        from loadgen.cluster import user_error

        _mark_failed(run_dir, exc)
        message = user_error(exc)  # a worker's limit error arrives wrapped in Ray's traceback: show it alone
        if message is None:
            raise
        console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    console.print(f"run directory: {run_dir}  ({meta.status.value})")
    if meta.levels:
        from loadgen.report import report_run

        report_run(run_dir, console=console, plots=cfg.analysis.plots)


def user_message(exc: BaseException) -> Optional[str]:
    """One line for an error the user can fix (a bad key, type, value or option); None for anything else."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        return f"config group '{group}' has no option {option!r}; expected one of {', '.join(sorted(exc.options))}."
    if isinstance(exc, OverrideParseException):
        override = _SECRET_LINE.sub(lambda m: m.group(1) + REDACTED, str(exc.override))  # a key stays off the terminal
        reason = str(exc).splitlines()[0] if override == str(exc.override) else "not Hydra's override syntax"
        return f"cannot parse the override {override!r}: {reason}"
    cause = exc.__cause__
    if isinstance(exc, OmegaConfBaseException):
        return omegaconf_message(exc)
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_message(cause)
    if type(exc).__module__.startswith("hydra."):
        return " ".join(str(exc).split())  # Hydra's own messages, on one line
    return None


def main() -> None:
    """Console-script entry point: the Hydra app, with every user error on one line.

    Hydra prints its own multi-line errors (or a traceback) unless HYDRA_FULL_ERROR=1 makes it
    raise; so it is set while the app runs, the error is caught here, and a user error is
    printed as one line. With HYDRA_FULL_ERROR=1 set by the user, everything is raised as is.
    """
    global _user_full_error
    _user_full_error = os.environ.get("HYDRA_FULL_ERROR", "")
    full_error = _user_full_error not in ("", "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        app()
    except ConfigRefused as refused:
        if full_error:
            raise refused.error from None
        Console(stderr=True).print(f"[red]error:[/] {refused.error}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:
        message = None if full_error else user_message(exc)
        if message is None:
            raise
        Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    finally:
        _set_env("HYDRA_FULL_ERROR", _user_full_error or None)


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: Hydra's callback
    # (loadgen.cli.ValidateFirst) raises loadgen.cli.ConfigRefused, which only that main catches.
    from loadgen import cli

    cli.main()
