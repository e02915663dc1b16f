"""Run the simulator in a child process, as the runner does for ``target=sim``.

Input: a ``SimProfile`` (and optionally faults and a ground-truth path). Output:
a running ``python -m loadgen.sim.cli --port 0`` child whose base URL is known
and whose /health answers; ``SimProcess.stop`` ends it with SIGTERM (the
ground truth is then closed under its final name), then SIGKILL if it hangs.
The child stops by itself if this process dies without stopping it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import IO, Optional

import loadgen
from loadgen.config import FaultConfig, SimProfile

_BANNER = "loadgen-sim listening on "


class SimStartError(RuntimeError):
    """The simulator child did not come up; the message ends with its stderr."""


class SimProcess:
    """A simulator child process: ``.url`` (ending in /v1), ``.pid``, ``.profile``, ``.stop()``; a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, profile: SimProfile, stderr: IO[bytes]) -> None:
        self.proc = proc
        self.url = url
        self.pid = proc.pid
        self.profile = profile
        self._stderr = stderr

    @property
    def running(self) -> bool:
        """Whether the child is still alive."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        self._terminate(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return self.proc.returncode

    def _terminate(self, timeout: float) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def _fail(self, reason: str) -> SimStartError:
        """Kill the child and describe why it did not start, with its stderr's tail."""
        try:
            exited: Optional[int] = self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            exited = None
        self._terminate(2.0)
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace")[-4000:].strip() or "(nothing)"
        self.stop()
        if exited is not None:
            reason = f"exited with code {exited}"
        return SimStartError(f"the simulator did not start ({reason}); its stderr:\n{tail}")

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_banner(proc: subprocess.Popen[bytes], deadline: float) -> Optional[str]:
    """The child's first stdout line, or None if it exits or the deadline passes first."""
    assert proc.stdout is not None
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return None
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                return None
            line += byte
    return line.decode(errors="replace").strip()


def _wait_healthy(url: str, deadline: float) -> bool:
    health = url.removesuffix("/v1") + "/health"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=1.0) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    return False


def profile_args(profile: SimProfile, faults: Optional[FaultConfig] = None) -> list[str]:
    """``loadgen-sim`` arguments that make it use exactly this profile (and faults)."""
    args = ["--profile-json", json.dumps(asdict(profile))]
    if faults is not None:
        args += ["--faults-json", json.dumps(asdict(faults))]
    return args


def start_sim(
    profile: SimProfile,
    faults: Optional[FaultConfig] = None,
    ground_truth: Optional[str] = None,
    host: str = "127.0.0.1",
    *,
    port: int = 0,
    log_path: Optional[str] = None,
    timeout: float = 30.0,
) -> SimProcess:
    """Start ``python -m loadgen.sim.cli`` on ``host`` (a free port unless given); wait until /health answers.

    The child's log (stderr) goes to ``log_path`` if given, else to a temporary
    file; either way its tail is in the SimStartError raised when it fails to start.
    """
    cmd = [sys.executable, "-m", "loadgen.sim.cli", "--host", host, "--port", str(port), "--exit-with-parent"]
    cmd += profile_args(profile, faults)
    if ground_truth:
        cmd += ["--ground-truth", ground_truth]
    env = dict(os.environ)
    # the child must import this very loadgen, installed or not
    root = str(Path(loadgen.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    stderr: IO[bytes] = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()
    # its own session: a Ctrl-C meant for the runner does not cut the streams the runner is draining
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env, start_new_session=True
    )
    sim = SimProcess(proc, "", profile, stderr)
    deadline = time.monotonic() + timeout
    banner = _read_banner(proc, deadline)
    if banner is None or not banner.startswith(_BANNER):
        raise sim._fail(f"printed {banner!r}" if banner else f"no banner within {timeout} s")
    sim.url = banner[len(_BANNER) :]
    if not _wait_healthy(sim.url, deadline):
        raise sim._fail(f"/health at {sim.url.removesuffix('/v1')} did not answer within {timeout} s")
    return sim
