"""Every `loadgen …` command in README.md and docs/*.md works as written.

Each fenced command is composed by Hydra and validated as ``loadgen`` would (fast, in this
process). Commands that need a server, a trace or a cluster stop there: the files they name are
stood in by empty temporary files and the environment variables they set are set. The ones that
run the embedded simulator on a synthetic workload also run, shortened, all in one process that
starts one local Ray (slow).

Run as a script (``python tests/test_docs_commands.py OUT_DIR COMMANDS.json``) it is that process:
it runs each override list of COMMANDS.json into OUT_DIR/<n> and prints one JSON line per run.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
#: Keys whose value is a file loadgen checks for; missing ones are stood in by empty files.
FILE_KEYS = ("path", "ca_file", "cert_file", "key_file", "tokenizer", "sim_profile")
#: Appended to a simulator command so that it runs in seconds: one short level, no plots. The
#: warm-up and window are just long enough for short requests to be judged (else the level reruns).
TINY = (
    "load.duration_s=2", "load.warmup_s=0.5", "load.levels=[2]", "load.drain_s=10",
    "load.search_start=2", "load.search_max_levels=2", "workload.num_requests=50",
    "analysis.plots=false", "progress=false",
)


@dataclass(frozen=True)
class DocCommand:
    """One ``loadgen`` command of the docs: where it is, the environment it sets, its arguments."""

    where: str
    env: tuple[tuple[str, str], ...]
    args: tuple[str, ...]
    line: str
    program: str = "loadgen"

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    def overrides(self) -> list[str]:
        """The Hydra overrides, without flags and without Hydra's own keys (the test picks the run dir)."""
        out = []
        for arg in self.args:
            if arg in ("-m", "--multirun", "--help", "-h") or arg.startswith("--cfg") or arg in ("job", "hydra", "all"):
                continue
            assert not arg.startswith("-"), f"{self.where}: unknown flag {arg!r}"
            if not arg.startswith("hydra."):
                out.append(arg)
        return out


def _logical_lines(block: str) -> list[tuple[int, str]]:
    """The block's lines with backslash continuations joined: (offset of the first line, text)."""
    out, buf, first = [], "", 0
    for i, line in enumerate(block.splitlines()):
        if not buf:
            first = i
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((first, buf + line))
        buf = ""
    return out


def doc_commands() -> list[DocCommand]:
    """Every ``loadgen`` command in a shell block of README.md and docs/*.md, with the block's variables expanded."""
    found = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for fence in FENCE.finditer(text):
            if fence.group(1).strip() not in SHELL_FENCES:
                continue
            first_line = text.count("\n", 0, fence.start(2)) + 1
            shell_vars: dict[str, str] = {}
            for offset, line in _logical_lines(fence.group(2)):
                try:
                    tokens = shlex.split(string.Template(line).safe_substitute(shell_vars), comments=True)
                except ValueError:
                    continue  # not shell (a table or an output sample)
                where = f"{path.relative_to(ROOT)}:{first_line + offset}"
                found += _commands_in(tokens, shell_vars, where, line)
    return found


def _commands_in(tokens: list[str], shell_vars: dict[str, str], where: str, line: str) -> list[DocCommand]:
    """The ``loadgen`` commands among one line's ``&&``/``;``-separated segments; assignments update ``shell_vars``."""
    out = []
    if tokens[:1] == ["$"]:
        tokens = tokens[1:]
    segments = [list(g) for sep, g in itertools.groupby(tokens, lambda t: t in ("&&", ";", "||")) if not sep]
    for seg in segments:
        env = []
        while seg and re.match(r"^[A-Za-z_]\w*=", seg[0]):
            name, _, value = seg.pop(0).partition("=")
            env.append((name, value))
        if not seg:
            shell_vars.update(env)  # NAME=VALUE alone: a shell variable for the lines below
        elif seg[0] in ("loadgen", "loadgen-report"):
            out.append(DocCommand(where, tuple(env), tuple(seg[1:]), line, seg[0]))
    return out


def expand(cmd: DocCommand) -> list[list[str]]:
    """The override lists of a command: one, or one per job of a multirun sweep."""
    overrides = cmd.overrides()
    if not cmd.multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def stand_in_files(overrides: list[str], tmp: Path) -> list[str]:
    """``overrides`` with every file they name that does not exist here replaced by an empty file in ``tmp``."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.rsplit(".", 1)[-1] in FILE_KEYS and value.endswith(tuple(".csv .json .jsonl .parquet .pem .key .yaml .yml".split())) and not os.path.isfile(value):
            stand_in = tmp / os.path.basename(value)
            stand_in.touch()
            o = f"{key}={stand_in}"
        out.append(o)
    return out


def compose(overrides: list[str]):
    """The validated LoadgenConfig ``loadgen OVERRIDES`` would run (Hydra composition, then loadgen's checks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore

    import loadgen.cli  # noqa: F401  (registers the schema and the help resolver)
    from loadgen.config import schema_node, to_config
    from loadgen.paths import conf_dir

    # Stored again: another module of the test session may have stored a schema of its own.
    ConfigStore.instance().store(name="loadgen_schema", node=schema_node())
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        node = hydra_compose("config", overrides=overrides)
    return to_config(node)


def runs_the_simulator(cfg) -> bool:
    """True when a config needs nothing but this machine: the simulator, a synthetic workload, a local Ray."""
    lengths = (cfg.workload.input_tokens, cfg.workload.output_tokens)
    return (
        cfg.target.kind == "sim" and cfg.cluster.kind == "local" and cfg.workload.kind == "synthetic"
        and all(d.dist != "empirical" for d in lengths)
    )


def _may_run_here(overrides: list[str]) -> bool:
    """A quick look before composing (slow on a busy machine): no other server, workload or cluster is picked."""
    picks = dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in ("target", "workload", "cluster"))
    sim = (ROOT / "conf" / "target" / f"{picks.get('target', 'sim')}.yaml").read_text()
    return re.search(r"^kind: sim$", sim, re.M) is not None and picks.get("workload", "synthetic") == "synthetic" \
        and picks.get("cluster", "local") == "local"


def shortened(overrides: list[str]) -> list[str]:
    """A simulator command's overrides made to finish in seconds.

    Answers are cut to 8 tokens whatever the command asked: a 2 s level is long enough to judge
    requests that short, where a longer answer would make the level run again, longer.
    """
    return [*overrides, *TINY, "workload.output_tokens=8"]


FOUND = doc_commands()
COMMANDS = [c for c in FOUND if c.program == "loadgen"]
REPORT_COMMANDS = [c for c in FOUND if c.program == "loadgen-report"]


def test_the_docs_have_commands_and_every_kind_is_found():
    wheres = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/workloads.md", "docs/engines.md"} <= wheres
    assert len(COMMANDS) >= 20
    assert any(c.multirun for c in COMMANDS)
    assert any(c.env for c in COMMANDS)  # TOKEN=… loadgen …


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_command_composes_and_validates(cmd, tmp_path, monkeypatch):
    for name, value in cmd.env:
        monkeypatch.setenv(name, value)
    if "OPENAI_BASE_URL" in cmd.line and not any(a.startswith("target.url") for a in cmd.args):
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")  # the command says it reads it
    for overrides in expand(cmd):
        compose(stand_in_files(overrides, tmp_path))


@pytest.mark.parametrize("cmd", REPORT_COMMANDS, ids=[c.where for c in REPORT_COMMANDS])
def test_every_report_command_parses(cmd):
    from loadgen.report.cli import build_parser, parse_overrides, split_overrides

    args = build_parser().parse_intermixed_args(list(cmd.args))
    dirs, overrides = split_overrides(args.run_dirs)
    assert dirs, cmd.where
    parse_overrides(overrides)


def simulator_runs(tmp: Path) -> list[list[str]]:
    """The distinct shortened override lists of every docs command that runs the simulator.

    A command that does not compose here (it needs a file or a variable) needs more than this
    machine anyway; test_every_command_composes_and_validates checks it.
    """
    from loadgen.config import ConfigError

    runs: dict[str, list[str]] = {}  # one run per distinct shortened config (`target=sim` is `loadgen`)
    for cmd in COMMANDS:
        if any(a.startswith("--cfg") or a in ("--help", "-h") for a in cmd.args):
            continue
        for overrides in expand(cmd):
            if stand_in_files(overrides, tmp) != overrides or not _may_run_here(overrides):
                continue  # it names a file this machine does not have, or a server, a trace or a cluster
            try:
                cfg = compose(overrides)
            except ConfigError:
                continue
            if runs_the_simulator(cfg):
                runs.setdefault(repr(cfg), shortened(overrides))
    return list(runs.values())


@pytest.mark.slow
def test_every_simulator_command_runs(tmp_path):
    runs = simulator_runs(tmp_path)
    assert shortened(["load=concurrency", "load.levels=[1,8,64]"]) in runs
    spec = tmp_path / "runs.json"
    spec.write_text(json.dumps(runs))
    res = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "out"), str(spec)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(runs), res.stdout[-3000:]
    for r in results:
        assert r["status"] == "complete" and r["levels"] >= 1 and r["ok"] > 0, r
        assert r["errors"] == 0, r


def _run_all(out_dir: str, spec: str) -> int:
    """Run every override list of ``spec`` into ``out_dir``/N with one local Ray; print a JSON line each."""
    import io

    from rich.console import Console

    from loadgen import cluster
    from loadgen.config import ClusterConfig
    from loadgen.report import report_run
    from loadgen.runner import run

    started = cluster.connect(ClusterConfig())  # one private Ray for every run (each run reuses it)
    try:
        for i, overrides in enumerate(json.loads(Path(spec).read_text())):
            run_dir = os.path.join(out_dir, str(i))
            console = Console(file=io.StringIO(), width=160)
            meta = run(compose(overrides), run_dir, console=console)
            report_run(run_dir, console=console, plots=False)
            ledgers = [lv.ledger for lv in meta.levels]
            print(json.dumps({
                "overrides": overrides, "status": meta.status.value, "levels": len(meta.levels),
                "ok": sum(led.ok for led in ledgers), "errors": sum(sum(led.errors.values()) for led in ledgers),
            }), flush=True)
    finally:
        cluster.shutdown(started)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(_run_all(sys.argv[1], sys.argv[2]))
