"""The private Ray of a ``cluster=local`` run: on 127.0.0.1 only, trimmed to what loadgen uses, gone with its driver.

Input: the number of CPUs to advertise. Output: a ``LocalRay`` the driver is
connected to (``ray.init`` done); ``stop()`` ends every process of it.

What is trimmed, and why it is safe for a private single-node Ray (what each
saves, measured with ``scripts/bench_startup.py``, is in docs/cluster.md):

- no dashboard / API server process: nobody submits jobs to or browses a
  private Ray (a joined cluster keeps its own);
- no autoscaler monitor: a single node never scales;
- no log monitor: worker output is not streamed to the terminal (errors still
  reach the driver as exceptions; the logs stay in the session directory);
- no worker prestart: a worker process starts when an actor needs one, not one
  per CPU ahead of time;
- no metrics collection or export: loadgen measures with its own records;
- no runtime env for the workers: they inherit the driver's environment from the
  raylet, so no setup process per worker and the runtime-env agent stays idle.

Ray's token authentication stays on (Ray's default for a local Ray) with a fresh
random token held only in the environment of this Ray's processes, so nothing
is written to ``~/.ray`` and Ray prints no warning about it. A user who set
``RAY_AUTH_MODE`` keeps their choice.

Every process of this Ray carries ``LOADGEN_LOCAL_RAY=<mark>`` in its
environment and holds files in its session directory; ``loadgen/watchdog.py``
(started before Ray, reading a pipe only the driver holds) ends all of them when
the driver exits, SIGKILL included.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Optional

from loadgen import watchdog

#: The address every process of the private Ray binds to.
LOOPBACK = "127.0.0.1"
#: Set before Ray starts (and before ``import ray``): Ray binds to 127.0.0.1 only when it is "0".
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: Environment of the private Ray's processes (read by the raylet's C++ config and the agents).
RAY_ENV = {
    **LOOPBACK_ENV,
    "RAY_USAGE_STATS_ENABLED": "0",
}
#: RayConfig entries for the private Ray (names as in Ray's ray_config_def.h, read by every process of it).
SYSTEM_CONFIG: dict[str, Any] = {
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "enable_metrics_collection": False,
}


@dataclass
class LocalRay:
    """A running private Ray: its head node, and the watchdog that ends it with the driver."""

    node: Any  # ray._private.node.Node
    watchdog: subprocess.Popen
    watchdog_pipe: int  # write end; closing it (or the driver's death) makes the watchdog sweep
    mark: str

    def stop(self, timeout_s: float = 30.0) -> None:
        """Disconnect, stop every process of this Ray, and wait for the watchdog's sweep to finish."""
        import ray

        if ray.is_initialized():
            ray.shutdown()
        try:
            self.node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        finally:
            # The watchdog ends what Ray's own shutdown leaves behind (the raylet's agents).
            os.close(self.watchdog_pipe)
            try:
                self.watchdog.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()


def auth_env() -> dict[str, str]:
    """The token-auth variables to add for a private Ray: a fresh token, unless the user chose a mode."""
    if os.environ.get("RAY_AUTH_MODE"):
        return {}
    # RAY_AUTH_TOKEN ranks above RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token in Ray's lookup.
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def start_watchdog(mark: str) -> tuple[subprocess.Popen, int]:
    """Start loadgen/watchdog.py in its own session; return it and the write end of its stdin pipe."""
    read_end, write_end = os.pipe()  # both non-inheritable: no Ray process can hold the pipe open
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", watchdog.__file__, mark],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group does not reach it
        )
    finally:
        os.close(read_end)
    return proc, write_end


def _head_node_class() -> type:
    from ray._private.node import Node

    class PrivateHead(Node):
        """A head node without the dashboard / API server process (nothing talks to a private Ray's)."""

        def start_api_server(self, *, include_dashboard: Optional[bool], raise_on_failure: bool) -> None:
            self._webui_url = None

    return PrivateHead


def start(num_cpus: int) -> LocalRay:
    """Start the private Ray on 127.0.0.1 with ``num_cpus`` CPUs and connect this process to it as the driver."""
    mark = f"{os.getpid()}-{secrets.token_hex(8)}"
    proc, pipe = start_watchdog(mark)
    env = {**RAY_ENV, **auth_env(), watchdog.MARK_VAR: mark}
    os.environ.update(env)
    node = None
    try:
        import ray
        from ray._private.parameter import RayParams

        if os.environ.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN" in env:
            # Ray's C++ side caches the token mode and token on first use; make it read them again.
            from ray._raylet import AuthenticationTokenLoader, Config

            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()
        params = RayParams(
            node_ip_address=LOOPBACK,
            num_cpus=num_cpus,
            num_gpus=0,
            include_dashboard=False,
            include_log_monitor=False,
            no_monitor=True,
            _system_config=dict(SYSTEM_CONFIG),
        )
        node = _head_node_class()(params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)
        # The agents overwrite their environment with their process title; the watchdog finds them by their
        # open files in the session directory instead.
        os.write(pipe, f"session {node.get_session_dir_path()}\n".encode())
        ray.init(
            address=node.address,
            logging_level="warning",
            log_to_driver=False,  # there is no log monitor to stream worker output
            _node_ip_address=LOOPBACK,
        )
    except BaseException:
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        os.close(pipe)
        proc.wait(30)
        raise
    finally:
        # Only the processes started above carry the mark; the driver's later children must not.
        os.environ.pop(watchdog.MARK_VAR, None)
    return LocalRay(node=node, watchdog=proc, watchdog_pipe=pipe, mark=mark)
