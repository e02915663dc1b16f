"""Ray for loadgen: start or join a cluster, place worker actors, collect their output, align their clocks.

Input: ``ClusterConfig``, the resolved target and the run directory. Output: a
``WorkerPool`` of Ray actor handles placed exactly (a count per node, or one
per CPU or ``loadgen`` slot of every eligible node) with one placement group
whose bundles are pinned to their nodes; a ``Collector`` on the driver's node
for workers that do not share its filesystem; and each worker's clock offset to
the driver (NTP-style, minimum-RTT of several samples), applied in the worker so
every record lands on one run-wide clock, and re-measured between levels.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from loadgen import localray
from loadgen.clock import now_ns
from loadgen.collector import OutputSpec, start_collector
from loadgen.config import ClusterConfig
from loadgen.localray import LOOPBACK_ENV, LocalRay
from loadgen.worker import TargetSpec, Worker

#: Ray's marker resource of the head node.
HEAD_RESOURCE = "node:__internal_head__"
#: Ray's built-in node label that pins a placement-group bundle to one node.
NODE_ID_LABEL = "ray.io/node-id"


class ClusterError(RuntimeError):
    """The cluster cannot host the workers asked for; the message says what is missing."""


#: The private Ray this process started for ``cluster=local``, if any.
_local: Optional[LocalRay] = None


def connect(cfg: ClusterConfig) -> bool:
    """Start a private local Ray or join ``cfg.address``; True when this call started Ray.

    ``local`` always starts a private instance (loadgen/localray.py: 127.0.0.1 only, trimmed, ended with the
    driver), even when another Ray runs on this machine. ``ray`` joins a running cluster and ships this
    loadgen package to it.
    """
    global _local
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
    elif is_loopback(cfg.address):
        # A cluster on 127.0.0.1 (scripts/cluster_start.sh --ip 127.0.0.1): without this Ray replaces the
        # address with this machine's external one and cannot reach the GCS.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        if "ray" in sys.modules:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # what the variable sets when Ray is imported
    import ray

    if ray.is_initialized():
        return False
    if cfg.kind == "local":
        _local = localray.start(cfg.num_cpus or os.cpu_count() or 1)
        return True
    ray.init(address=cfg.address, logging_level="warning", runtime_env=runtime_env(cfg))
    return True


def is_loopback(address: Optional[str]) -> bool:
    """Whether a Ray address (``HOST:PORT``, ``ray://HOST:PORT``, or ``auto``: then ``$RAY_ADDRESS``, as in a Ray
    job) names this machine's loopback interface."""
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS", "")
    host = (address or "").split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def runtime_env(cfg: ClusterConfig) -> Optional[dict[str, Any]]:
    """The job's runtime env: this loadgen package shipped to every node unless ``ship_code`` is off."""
    if not cfg.ship_code:
        return None
    import loadgen

    # Only the package travels; workers never read conf/ (the driver resolved the config).
    return {"py_modules": [os.path.dirname(os.path.abspath(loadgen.__file__))], "excludes": ["__pycache__", "*.pyc"]}


def shutdown(started: bool) -> None:
    """Stop Ray if this run started it: a private local Ray is stopped whole, every process of it."""
    global _local
    import ray

    if started and _local is not None:
        local, _local = _local, None
        local.stop()
    elif started and ray.is_initialized():
        ray.shutdown()


# --------------------------------------------------------------------------- errors


def remote_cause(exc: BaseException) -> BaseException:
    """The exception a worker actor raised, out of Ray's ``RayTaskError`` wrappers; ``exc`` when none wraps it.

    Ray re-raises a worker's exception in the driver as a RayTaskError whose text
    holds the remote traceback; ``cause`` is the worker's own exception.
    """
    ray_exceptions = getattr(sys.modules.get("ray"), "exceptions", None)  # never import Ray just for this
    if ray_exceptions is None:
        return exc
    seen: set[int] = set()
    while isinstance(exc, ray_exceptions.RayTaskError) and exc.cause is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.cause
    return exc


def user_error(exc: BaseException) -> Optional[str]:
    """The message to show alone when ``exc`` (or what a worker raised under it) is an OS limit or a cluster problem
    the user fixes; None for anything else (a bug: its traceback stays) and whenever HYDRA_FULL_ERROR=1."""
    from loadgen.worker import ClientLimitError

    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for every traceback
        return None
    cause = remote_cause(exc)
    if isinstance(cause, (ClientLimitError, ClusterError)):
        return str(cause).strip() or type(cause).__name__
    return None


# --------------------------------------------------------------------------- placement


def _resources(node: dict[str, Any]) -> dict[str, float]:
    return node.get("Resources") or {}


def _name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"


def head_node_id(nodes: list[dict[str, Any]]) -> Optional[str]:
    """The head node's id (Ray marks it with a resource), or None if no node carries the mark."""
    for node in nodes:
        if _resources(node).get(HEAD_RESOURCE):
            return node["NodeID"]
    return None


def eligible_nodes(nodes: list[dict[str, Any]], cfg: ClusterConfig, head: Optional[str]) -> list[dict[str, Any]]:
    """Alive nodes workers may use: with ``node_resource`` if set, not the head unless allowed; stable order."""
    alive = [n for n in nodes if n.get("Alive", True)]
    out = alive
    if cfg.node_resource:
        out = [n for n in out if _resources(n).get(cfg.node_resource, 0) > 0]
    if not cfg.allow_head_node:
        out = [n for n in out if n["NodeID"] != head]
    if not out:
        why = [f"{len(alive)} alive node(s)"]
        if cfg.node_resource:
            why.append(f"cluster.node_resource={cfg.node_resource!r} keeps only nodes started with --resources "
                       f"'{{\"{cfg.node_resource}\": N}}'")
        if not cfg.allow_head_node:
            why.append("cluster.allow_head_node=false excludes the head node")
        raise ClusterError("no node can host loadgen workers: " + "; ".join(why) + ".")
    return sorted(out, key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"]))


def node_capacity(node: dict[str, Any], cfg: ClusterConfig) -> int:
    """How many workers fit on ``node``: its CPUs / worker_cpus, and at most its ``node_resource`` slots."""
    res = _resources(node)
    n = int(res.get("CPU", 0) / cfg.worker_cpus + 1e-9)
    if cfg.node_resource:
        n = min(n, int(res.get(cfg.node_resource, 0) + 1e-9))
    return n


def _default_per_node(node: dict[str, Any], cfg: ClusterConfig) -> int:
    # One per core, or one per `loadgen` slot when the nodes advertise them.
    res = _resources(node)
    n = int(res.get(cfg.node_resource, 0) + 1e-9) if cfg.node_resource else int(res.get("CPU", 0) + 1e-9)
    return min(max(n, 1), node_capacity(node, cfg))


def plan_placement(nodes: list[dict[str, Any]], cfg: ClusterConfig, head: Optional[str] = None) -> list[str]:
    """The node id of every worker, in worker order; ClusterError when the cluster cannot hold them.

    ``workers_per_node=N``: exactly N on every eligible node. ``workers=N``: N
    dealt round-robin over the eligible nodes (most capacity first). Neither: one
    per CPU (or per ``node_resource`` slot) of every eligible node.
    """
    eligible = eligible_nodes(nodes, cfg, head)
    need = f"{cfg.worker_cpus:g} CPU" + (f" + 1 {cfg.node_resource}" if cfg.node_resource else "")
    if cfg.workers_per_node:
        short = [n for n in eligible if node_capacity(n, cfg) < cfg.workers_per_node]
        if short:
            raise ClusterError(
                f"cluster.workers_per_node={cfg.workers_per_node} needs room for {cfg.workers_per_node} workers "
                f"({need} each) on every eligible node, but "
                + ", ".join(f"{_name(n)} holds {node_capacity(n, cfg)}" for n in short)
                + ". Lower workers_per_node or cluster.worker_cpus, or leave those nodes out (cluster.node_resource)."
            )
        return [n["NodeID"] for n in eligible for _ in range(cfg.workers_per_node)]
    if not cfg.workers:
        out = [n["NodeID"] for n in eligible for _ in range(_default_per_node(n, cfg))]
        if not out:
            raise ClusterError(
                f"no eligible node has room for a worker ({need}): "
                + ", ".join(f"{_name(n)}: {_resources(n).get('CPU', 0):g} CPU" for n in eligible)
                + ". Lower cluster.worker_cpus."
            )
        return out
    room = {n["NodeID"]: node_capacity(n, cfg) for n in eligible}
    if cfg.workers > sum(room.values()):
        raise ClusterError(
            f"cluster.workers={cfg.workers} ({need} each) do not fit: the eligible nodes hold "
            f"{sum(room.values())} (" + ", ".join(f"{_name(n)}: {room[n['NodeID']]}" for n in eligible)
            + "). Lower cluster.workers or cluster.worker_cpus, or add nodes."
        )
    order = sorted(eligible, key=lambda n: -room[n["NodeID"]])
    out: list[str] = []
    while len(out) < cfg.workers:
        for node in order:
            nid = node["NodeID"]
            if room[nid] > 0 and len(out) < cfg.workers:
                out.append(nid)
                room[nid] -= 1
    # Workers on one node get neighbouring ids, so `worker=W` partitions group by node.
    rank = {n["NodeID"]: i for i, n in enumerate(eligible)}
    return sorted(out, key=lambda nid: rank[nid])


# --------------------------------------------------------------------------- workers


@dataclass
class WorkerPool:
    """The run's worker actors, their placement and output path, and what the driver measured."""

    actors: list[Any]
    info: list[dict[str, Any]] = field(default_factory=list)
    placement_group: Any = None
    collector: Any = None  # Collector actor on the driver's node, when some worker sends through Ray

    def __len__(self) -> int:
        return len(self.actors)

    def max_clock_uncertainty_ns(self) -> int:
        """The largest half-RTT of the last clock measurement of any worker."""
        return max((int(i.get("clock_rtt_ns", 0)) // 2 for i in self.info), default=0)

    def collected_rows(self) -> dict[str, int]:
        """Rows the collector wrote, per destination directory (empty without a collector)."""
        import ray

        return ray.get(self.collector.rows.remote(), timeout=30) if self.collector is not None else {}

    def close(self) -> None:
        """Close sessions and release the actors, the collector and the placement group."""
        import ray

        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
                pass
            ray.kill(actor)
        if self.collector is not None:
            ray.kill(self.collector)
        if self.placement_group is not None:
            ray.util.remove_placement_group(self.placement_group)


def _check_supported() -> None:
    import inspect

    import ray
    from ray.util.placement_group import placement_group

    if "bundle_label_selector" not in inspect.signature(placement_group).parameters:
        raise ClusterError(
            f"ray {ray.__version__} cannot pin placement-group bundles to nodes (bundle_label_selector); "
            "loadgen needs ray>=2.49"
        )


def start_workers(
    cfg: ClusterConfig,
    run_id: str,
    target: TargetSpec,
    run_uri: str,
    *,
    clock_skew_ns: Optional[dict[int, int]] = None,
    urls: Optional[list[str]] = None,
) -> WorkerPool:
    """Place the workers (one placement group, every bundle pinned to its node) and wait until they are up.

    ``urls`` (a fleet of replicas): worker W sends to ``urls[W % len(urls)]``.
    ``clock_skew_ns`` shifts chosen workers' clocks, to test the clock sync.
    """
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    _check_supported()
    nodes = ray.nodes()
    placement = plan_placement(nodes, cfg, head_node_id(nodes))
    n = len(placement)
    if urls and n < len(urls):
        raise ClusterError(
            f"{len(urls)} target.urls but only {n} workers: some replicas would get no load. Use at least "
            f"{len(urls)} workers (cluster.workers or cluster.workers_per_node)."
        )
    bundle: dict[str, float] = {"CPU": cfg.worker_cpus}
    if cfg.node_resource:
        bundle[cfg.node_resource] = 1
    pg = placement_group(
        [dict(bundle) for _ in placement],
        strategy="PACK",
        bundle_label_selector=[{NODE_ID_LABEL: nid} for nid in placement],
    )
    if not _wait(pg.ready(), cfg.placement_timeout_s):
        ray.util.remove_placement_group(pg)
        raise ClusterError(
            f"could not reserve {n} workers ({bundle} each) on their nodes within "
            f"cluster.placement_timeout_s={cfg.placement_timeout_s:g} s: other jobs hold the resources. Free per "
            f"node: {_free_per_node(placement)}"
        )
    _verify_pinned(pg, placement)
    driver_node = ray.get_runtime_context().get_node_id()
    remote = [cfg.collect == "driver" or (cfg.collect == "auto" and nid != driver_node) for nid in placement]
    if any(remote) and ray.util.client.ray.is_connected():
        ray.util.remove_placement_group(pg)
        raise ClusterError(
            "with a ray:// address (Ray Client) the driver is not a node of the cluster, so no collector can "
            "write to its disk. Run loadgen on a cluster node (cluster.address=auto or HEAD_IP:PORT), or set "
            "cluster.collect=direct with a run directory every node shares (cluster.records_uri for the records)."
        )
    collector = start_collector(driver_node) if any(remote) else None
    outputs = [
        OutputSpec(run_uri, cfg.records_uri, collector if r else None, cfg.max_batches_in_flight) for r in remote
    ]
    actor_cls = ray.remote(Worker)
    actors = [
        actor_cls.options(
            num_cpus=cfg.worker_cpus,
            resources={cfg.node_resource: 1} if cfg.node_resource else None,
            max_concurrency=8,
            max_restarts=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
        ).remote(
            i,
            run_id,
            dataclasses.replace(target, base_url=urls[i % len(urls)]) if urls else target,
            cfg,
            run_uri,
            (clock_skew_ns or {}).get(i, 0),
            outputs[i],
        )
        for i in range(n)
    ]
    pool = WorkerPool(actors=actors, placement_group=pg, collector=collector)
    try:
        pool.info = ray.get([a.info.remote() for a in actors], timeout=cfg.placement_timeout_s + 60)
    except ray.exceptions.GetTimeoutError:
        pool.close()
        raise ClusterError(
            f"the {n} workers were placed but not all started within {cfg.placement_timeout_s + 60:g} s; the "
            "Ray logs of their nodes (session_latest/logs under Ray's temp dir) say why"
        ) from None
    except ray.exceptions.RayActorError as exc:
        pool.close()
        hint = "" if cfg.ship_code else " If the nodes do not have loadgen installed, set cluster.ship_code=true."
        raise ClusterError(f"a worker failed to start: {exc}.{hint}") from None
    except BaseException:
        pool.close()
        raise
    return pool


def _free_per_node(node_ids: list[str]) -> str:
    import ray

    free = {n["NodeID"]: n for n in ray.nodes()}
    try:
        from ray._private.state import available_resources_per_node

        avail = available_resources_per_node()
    except Exception:  # noqa: BLE001 - a private API; the totals still help
        avail = {}
    return "; ".join(
        f"{_name(free[nid])}: {({k: v for k, v in avail.get(nid, {}).items() if not k.startswith('node:')})}"
        for nid in dict.fromkeys(node_ids)
        if nid in free
    )


def _verify_pinned(pg: Any, placement: list[str]) -> None:
    import ray

    where = ray.util.placement_group_table(pg).get("bundles_to_node_id", {})
    wrong = [i for i, nid in enumerate(placement) if where.get(i) != nid]
    if wrong:
        ray.util.remove_placement_group(pg)
        raise ClusterError(
            f"ray {ray.__version__} placed bundles {wrong} on other nodes than their label selectors asked; "
            "loadgen needs ray>=2.49 for exact placement"
        )


def _wait(ref: Any, timeout: float) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=timeout)
    return bool(ready)


# --------------------------------------------------------------------------- clocks


def measure_clock(actor: Any, samples: int, now: Callable[[], int] = now_ns) -> tuple[int, int]:
    """One worker's clock offset and the RTT of the sample it came from (the smallest of ``samples``).

    The worker read its clock somewhere inside the round trip, so the offset is
    right to within half that RTT.
    """
    import ray

    best: Optional[tuple[int, int]] = None
    for _ in range(max(1, samples)):
        t0 = now()
        tw = ray.get(actor.clock_ns.remote())
        t1 = now()
        rtt = t1 - t0
        if best is None or rtt < best[0]:
            best = (rtt, tw - (t0 + t1) // 2)
    assert best is not None
    return best[1], best[0]


def sync_clocks(pool: WorkerPool, samples: int, now: Callable[[], int] = now_ns) -> list[dict[str, Any]]:
    """Measure and apply every worker's clock offset; return the workers' run.json entries.

    Each entry holds the latest ``clock_offset_ns``/``clock_rtt_ns`` and every
    measurement so far in ``clock_samples``. Calling it again (between levels)
    re-measures, applies the new offsets and appends to ``clock_samples``.
    """
    import ray

    applied = []
    for actor, info in zip(pool.actors, pool.info):
        if not info.get("alive", True):
            continue
        try:
            offset, rtt = measure_clock(actor, samples, now)
        except ray.exceptions.RayActorError:
            continue  # a dead worker is accounted for by the level that lost it
        applied.append(actor.set_clock_offset.remote(offset, rtt // 2))
        info["clock_offset_ns"] = int(offset)
        info["clock_rtt_ns"] = int(rtt)
        info.setdefault("clock_samples", []).append({"t_ns": now(), "offset_ns": int(offset), "rtt_ns": int(rtt)})
        info.setdefault("alive", True)
    ray.get(applied)
    return pool.info
