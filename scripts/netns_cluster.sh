#!/usr/bin/env bash
# A real multi-host Ray cluster on this one machine, built from Linux network namespaces:
# it runs a distributed loadgen sweep through the cluster, checks the run directory, and
# tears everything down. Needs root (ip netns).
#
#   sudo scripts/netns_cluster.sh [RUN_DIR] [-- EXTRA LOADGEN OVERRIDES ...]
#   sudo scripts/netns_cluster.sh --check     # exit 0 if network namespaces can be made here
#
# Layout (one private /24 that exists only inside these namespaces):
#   ${P}-br    a bridge, no address; every other namespace has one veth end on it
#   ${P}-head  10.77.0.1    Ray head (no loadgen slots) and the loadgen driver
#   ${P}-wK    10.77.0.1K   Ray worker node K with `loadgen` slots (K = 1..WORKERS)
#   ${P}-sim   10.77.0.100  simulator replicas on ports 8001.. (the fleet in target.urls)
# The machine's own namespace gets no interface, address or route, so no traffic can leave
# these namespaces and nothing binds to the machine's interfaces. On exit (also on error or
# Ctrl-C) the trap stops the Ray nodes and simulators this script started, by pid, and
# deletes the namespaces (which deletes their veths and the bridge).
#
# Environment: LOADGEN_NETNS_PREFIX (P, default lgns), WORKERS (2), SIMS (2), NODE_CPUS (2),
# NODE_SLOTS (2), LEVELS ([4,8]), DURATION_S (3).
set -euo pipefail

P="${LOADGEN_NETNS_PREFIX:-lgns}"
NET=10.77.0
WORKERS="${WORKERS:-2}"
SIMS="${SIMS:-2}"
NODE_CPUS="${NODE_CPUS:-2}"
NODE_SLOTS="${NODE_SLOTS:-2}"
LEVELS="${LEVELS:-[4,8]}"
DURATION_S="${DURATION_S:-3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"

log() { printf '[netns_cluster] %s\n' "$*" >&2; }

check() {
  # Can this process make (and remove) a network namespace with a veth pair?
  local probe="${P}-probe-$$"
  command -v ip >/dev/null || { echo "the ip command (iproute2) is not installed"; return 1; }
  ip netns add "$probe" 2>/dev/null || { echo "ip netns add is not permitted here (needs root / CAP_SYS_ADMIN)"; return 1; }
  if ! ip -n "$probe" link add a0 type veth peer name b0 2>/dev/null; then
    ip netns del "$probe"
    echo "veth pairs cannot be created here"
    return 1
  fi
  ip netns del "$probe"
}

if [[ "${1:-}" == --check ]]; then
  if why="$(check)"; then exit 0; fi
  echo "$why" >&2
  exit 77
fi

RUN_DIR="${1:-/tmp/${P}-run}"
shift || true
[[ "${1:-}" == -- ]] && shift
EXTRA=("$@")

if ! why="$(check)"; then
  echo "netns_cluster.sh: $why" >&2
  exit 77
fi

STATE="$(mktemp -d "/tmp/${P}-state.XXXXXX")"
export LOADGEN_CLUSTER_DIR="$STATE/nodes"
# Ray's session files, sockets and logs stay in this run's own directory.
export LOADGEN_RAY_TEMP_DIR="$STATE/ray"
export RAY_USAGE_STATS_ENABLED=0
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER RAY_ADDRESS RAY_AUTH_TOKEN
# This cluster's own token (Ray's token authentication): every node and the driver read it.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
(umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

NAMESPACES=()
SIM_PIDS=()

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  log "tearing down"
  if [[ -d "$LOADGEN_CLUSTER_DIR" ]]; then
    LOADGEN_NODE_STOP_TIMEOUT_S=20 "$HERE/cluster_stop.sh" >/dev/null
  fi
  for pid in "${SIM_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${SIM_PIDS[@]}"; do
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null
  done
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null
  done
  if ((rc != 0)) && [[ -d "$STATE" ]]; then
    log "failed (exit $rc); node logs:"
    for f in "$LOADGEN_CLUSTER_DIR"/*.log "$STATE"/sim-*.log; do
      [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  rm -rf "$STATE"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ns in "$P-br" "$P-head" "$P-sim" $(seq -f "$P-w%g" 1 "$WORKERS"); do
  if ip netns list | grep -qw "^$ns"; then
    echo "netns_cluster.sh: namespace $ns already exists (another run, or a crashed one: ip netns del $ns)" >&2
    exit 1
  fi
done

# ---------------------------------------------------------------- network
ip netns add "$P-br"
NAMESPACES+=("$P-br")
ip -n "$P-br" link set lo up
ip -n "$P-br" link add br0 type bridge
ip -n "$P-br" link set br0 up

add_host() {  # add_host NAMESPACE ADDRESS
  local ns="$1" addr="$2" peer="v-${1#"$P"-}"
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip -n "$ns" link set lo up
  ip -n "$ns" link add eth0 type veth peer name "$peer" netns "$P-br"
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$P-br" link set "$peer" master br0
  ip -n "$P-br" link set "$peer" up
}

add_host "$P-head" "$NET.1"
add_host "$P-sim" "$NET.100"
for k in $(seq 1 "$WORKERS"); do add_host "$P-w$k" "$NET.$((10 + k))"; done
log "namespaces up: ${NAMESPACES[*]} on $NET.0/24"

# ---------------------------------------------------------------- simulators
URLS=()
for s in $(seq 1 "$SIMS"); do
  port=$((8000 + s))
  ip netns exec "$P-sim" "$PY" -m loadgen.sim.cli --host "$NET.100" --port "$port" \
    --log-level WARNING >"$STATE/sim-$s.log" 2>&1 &
  SIM_PIDS+=("$!")
  URLS+=("http://$NET.100:$port/v1")
done
wait_health() {  # from the head namespace, as the driver will reach them
  ip netns exec "$P-head" "$PY" - "$@" <<'PYEOF'
import sys, time, urllib.request
deadline = time.monotonic() + 60
for url in sys.argv[1:]:
    health = url.removesuffix("/v1") + "/health"
    while True:
        try:
            with urllib.request.urlopen(health, timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{health} did not answer within 60 s")
        time.sleep(0.2)
PYEOF
}
wait_health "${URLS[@]}"
log "simulators up: ${URLS[*]}"

# ---------------------------------------------------------------- ray
ip netns exec "$P-head" "$HERE/cluster_start.sh" head --ip "$NET.1" --port 6379 --cpus 1 --slots 0 >&2
for k in $(seq 1 "$WORKERS"); do
  ip netns exec "$P-w$k" "$HERE/cluster_start.sh" worker --ip "$NET.$((10 + k))" --address "$NET.1:6379" \
    --cpus "$NODE_CPUS" --slots "$NODE_SLOTS" --name "w$k" >&2
done

# ---------------------------------------------------------------- the sweep
url_list="[$(IFS=,; echo "${URLS[*]}")]"
log "running loadgen from $P-head into $RUN_DIR"
ip netns exec "$P-head" "$PY" -m loadgen.cli \
  hydra.run.dir="$RUN_DIR" \
  cluster=ray cluster.address="$NET.1:6379" cluster.node_resource=loadgen cluster.allow_head_node=false \
  target=openai "target.urls=$url_list" \
  load=sweep "load.levels=$LEVELS" load.duration_s="$DURATION_S" load.warmup_s=0.5 load.drain_s=20 \
  workload.num_requests=200 progress=false analysis.plots=false \
  "${EXTRA[@]}"

# ---------------------------------------------------------------- checks
"$PY" - "$RUN_DIR" "$WORKERS" "$NODE_SLOTS" "$NET" <<'PYEOF'
import json, sys
from collections import Counter

import pyarrow.compute as pc

from loadgen.rundir import read_records

run_dir, workers, slots, net = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
meta = json.load(open(f"{run_dir}/run.json"))
problems = []
if meta["status"] != "complete":
    problems.append(f"run status is {meta['status']!r}")
ws = meta["workers"]
head_ip = f"{net}.1"
ips = Counter(w["ip"] for w in ws)
if len(ws) != workers * slots:
    problems.append(f"{len(ws)} workers, expected {workers} nodes x {slots} slots")
if head_ip in ips:
    problems.append(f"workers on the head node: {ips}")
if len(ips) != workers or any(n != slots for n in ips.values()):
    problems.append(f"workers per node {dict(ips)}, expected {slots} on each of {workers} nodes")
if any(w["output"] != "collector" for w in ws):
    problems.append("a worker off the driver's node did not send its records through the collector")
urls = Counter(w["url"] for w in ws)
if len(urls) != len(meta["target"]["urls"]):
    problems.append(f"workers per replica {dict(urls)} do not cover the fleet {meta['target']['urls']}")
records = read_records(run_dir)
ids = records.column("request_id")
if pc.count_distinct(ids).as_py() != records.num_rows:
    problems.append("duplicate request ids in the records")
for level in meta["levels"]:
    n = pc.sum(pc.equal(records.column("level"), level["level"])).as_py() or 0
    if n != level["ledger"]["sent"] or level["ledger"]["lost"]:
        problems.append(f"level {level['level']}: {n} records, ledger {level['ledger']}")
    if level["ledger"]["ok"] != level["ledger"]["sent"]:
        problems.append(f"level {level['level']}: not every request succeeded: {level['ledger']}")
nodes = set(records.column("node_id").to_pylist())
if len(nodes) != workers:
    problems.append(f"records come from {len(nodes)} node(s), expected {workers}")
print(f"run {meta['run_id']}: {records.num_rows} records from {len(ws)} workers on {len(nodes)} nodes "
      f"({', '.join(sorted(ips))}) against {len(urls)} replicas; clock RTT max "
      f"{max(w['clock_rtt_ns'] for w in ws) / 1e6:.2f} ms")
if problems:
    sys.exit("checks failed:\n  " + "\n  ".join(problems))
print("checks passed")
PYEOF
