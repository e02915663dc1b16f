"""Ray for loadgen: start or join a cluster, place worker actors, measure their clocks.

Input: ``ClusterConfig`` and the resolved target. Output: a ``WorkerPool`` of
Ray actor handles spread over nodes with a placement group, each with its
clock offset to the driver measured (NTP-style, minimum-RTT sample) and
applied, so every record lands on one run-wide clock.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from loadgen.config import ClusterConfig
from loadgen.worker import TargetSpec, Worker

# A single-machine Ray binds to 127.0.0.1 only when this is set before it starts.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class ClusterError(RuntimeError):
    """The cluster cannot host the workers asked for; the message says what is missing."""


class DriverClock:
    """The driver's run clock: epoch-based, advancing with the monotonic clock."""

    def __init__(self) -> None:
        self._base = time.time_ns() - time.monotonic_ns()

    def now(self) -> int:
        """Now on the run clock (ns)."""
        return time.monotonic_ns() + self._base


def connect(cfg: ClusterConfig) -> bool:
    """Start a private local Ray or join ``cfg.address``; True when this call started Ray."""
    if cfg.kind == "local":
        if "ray" in sys.modules and not sys.modules["ray"].is_initialized():
            # Ray reads this when it is imported; too late now means it may bind to every interface.
            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
                raise ClusterError(
                    "ray was imported before loadgen could keep the local Ray on 127.0.0.1; set "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment or import loadgen.cluster first"
                )
        for key, value in LOOPBACK_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    if cfg.kind == "local":
        ray.init(
            num_cpus=cfg.num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=True,
            logging_level="warning",
            _node_ip_address="127.0.0.1",
            runtime_env={"env_vars": dict(LOOPBACK_ENV)},
        )
        return True
    import loadgen

    ray.init(
        address=cfg.address,
        logging_level="warning",
        runtime_env={"py_modules": [os.path.dirname(loadgen.__file__)]} if _needs_code_shipping(cfg) else None,
    )
    return True


def _needs_code_shipping(cfg: ClusterConfig) -> bool:
    # Remote clients (ray://) and multi-host clusters may not have loadgen installed.
    return bool(cfg.address and cfg.address.startswith("ray://"))


def shutdown(started: bool) -> None:
    """Stop Ray if this run started it."""
    import ray

    if started and ray.is_initialized():
        ray.shutdown()


@dataclass
class WorkerPool:
    """The run's worker actors and what the driver measured about them."""

    actors: list[Any]
    info: list[dict[str, Any]] = field(default_factory=list)
    placement_group: Any = None

    def __len__(self) -> int:
        return len(self.actors)

    def close(self) -> None:
        """Close sessions and release the actors."""
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
                pass
            ray.kill(actor)
        if self.placement_group is not None:
            ray.util.remove_placement_group(self.placement_group)


def _eligible_nodes(cfg: ClusterConfig) -> list[dict[str, Any]]:
    import ray

    head = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if cfg.node_resource:
        nodes = [n for n in nodes if n.get("Resources", {}).get(cfg.node_resource, 0) > 0]
    if not cfg.allow_head_node and len(nodes) > 1:
        nodes = [n for n in nodes if n["NodeID"] != head]
    return nodes


def worker_count(cfg: ClusterConfig) -> int:
    """How many workers to start: as configured, or one per CPU of the eligible nodes."""
    nodes = _eligible_nodes(cfg)
    if cfg.workers_per_node:
        return cfg.workers_per_node * len(nodes)
    if cfg.workers:
        return cfg.workers
    return max(1, int(sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)))


def start_workers(
    cfg: ClusterConfig, run_id: str, target: TargetSpec, run_uri: str, *, clock_skew_ns: Optional[dict[int, int]] = None
) -> WorkerPool:
    """Place ``worker_count`` actors with a SPREAD placement group and wait until they are up."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    n = worker_count(cfg)
    bundle: dict[str, float] = {"CPU": cfg.worker_cpus}
    if cfg.node_resource:
        bundle[cfg.node_resource] = 0.001
    nodes = _eligible_nodes(cfg)
    total_cpu = sum(node.get("Resources", {}).get("CPU", 0) for node in nodes)
    if n * cfg.worker_cpus > total_cpu + 1e-9:
        raise ClusterError(
            f"{n} workers x cluster.worker_cpus={cfg.worker_cpus} need {n * cfg.worker_cpus:g} CPUs, but the "
            f"eligible nodes have {total_cpu:g}. Lower cluster.workers or cluster.worker_cpus, or add nodes."
        )
    strategy = "STRICT_SPREAD" if cfg.workers_per_node == 1 else "SPREAD"
    pg = placement_group([dict(bundle) for _ in range(n)], strategy=strategy)
    if not _wait(pg.ready(), timeout=60):
        ray.util.remove_placement_group(pg)
        raise ClusterError(
            f"could not place {n} workers ({bundle} each, strategy {strategy}) within 60 s; the cluster has "
            f"{ray.available_resources()} available"
        )
    actor_cls = ray.remote(Worker)
    actors = [
        actor_cls.options(
            num_cpus=cfg.worker_cpus,
            max_concurrency=8,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(i, run_id, target, cfg, run_uri, (clock_skew_ns or {}).get(i, 0))
        for i in range(n)
    ]
    info = ray.get([a.info.remote() for a in actors])
    return WorkerPool(actors=actors, info=info, placement_group=pg)


def _wait(ref: Any, timeout: float) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready)


def sync_clocks(pool: WorkerPool, clock: DriverClock, samples: int) -> list[dict[str, Any]]:
    """Measure each worker's clock offset (minimum-RTT of ``samples``) and apply it."""
    import ray

    results = []
    applied = []
    for actor, info in zip(pool.actors, pool.info):
        best: Optional[tuple[int, int]] = None
        for _ in range(max(1, samples)):
            t0 = clock.now()
            tw = ray.get(actor.clock_ns.remote())
            t1 = clock.now()
            rtt = t1 - t0
            offset = tw - (t0 + t1) // 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        assert best is not None
        rtt, offset = best
        applied.append(actor.set_clock_offset.remote(offset, rtt // 2))
        entry = {**info, "clock_offset_ns": int(offset), "clock_rtt_ns": int(rtt), "alive": True}
        results.append(entry)
    ray.get(applied)
    return results
