#!/usr/bin/env bash
# Start one Ray node for loadgen: the head, or a worker joining it. Run it once per machine.
#
#   scripts/cluster_start.sh head   --ip 10.0.0.1 [--port 6379] [--cpus N] [--slots N]
#   scripts/cluster_start.sh worker --ip 10.0.0.2 --address 10.0.0.1:6379 [--cpus N] [--slots N]
#
# --ip      the address this node is reached at (ray start --node-ip-address); every Ray
#           process of the node binds to it, so name the interface the other nodes see.
# --cpus    logical CPUs Ray may hand out on this node (default: all cores).
# --slots   loadgen worker slots, advertised as the custom resource {"loadgen": N}
#           (default: --cpus on a worker, 0 on the head: the driver runs there).
#           Run loadgen with cluster.node_resource=loadgen to place workers only on
#           nodes with slots, one per slot.
# --name    a name for this node's pid and log files (default: head / worker-IP).
#
# The node runs in the foreground-blocking mode of `ray start` (`--block`) in the
# background; its pid goes to $LOADGEN_CLUSTER_DIR/NAME.pid (default /tmp/loadgen-cluster)
# so scripts/cluster_stop.sh stops exactly this node (and leaves any other Ray alone).
# No dashboard, no usage statistics.
#
# Ray's token authentication (recent Ray turns it on once a token exists): give every node
# and the loadgen driver the same token, e.g. `export RAY_AUTH_MODE=token
# RAY_AUTH_TOKEN_PATH=/path/to/token` (a file made once with `ray get-auth-token --generate`
# and copied to each machine) before running this script and loadgen.
set -euo pipefail

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

role="${1:-}"; [[ "$role" == head || "$role" == worker ]] || usage
shift
ip="" address="" port=6379 cpus="" slots="" name=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ip) ip="$2"; shift 2 ;;
    --address) address="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --slots) slots="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "cluster_start.sh: unknown option $1" >&2; usage ;;
  esac
done
[[ -n "$ip" ]] || { echo "cluster_start.sh: --ip is required (the address other nodes reach this one at)" >&2; exit 2; }
[[ "$role" == head || -n "$address" ]] || { echo "cluster_start.sh: a worker needs --address HEAD_IP:PORT" >&2; exit 2; }
cpus="${cpus:-$(nproc)}"
if [[ -z "$slots" ]]; then
  if [[ "$role" == head ]]; then slots=0; else slots="$cpus"; fi
fi
name="${name:-$([[ "$role" == head ]] && echo head || echo "worker-$ip")}"

state="${LOADGEN_CLUSTER_DIR:-/tmp/loadgen-cluster}"
mkdir -p "$state"
pidfile="$state/$name.pid"
log="$state/$name.log"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "cluster_start.sh: node '$name' already runs (pid $(cat "$pidfile")); stop it with scripts/cluster_stop.sh $name" >&2
  exit 1
fi

export RAY_USAGE_STATS_ENABLED=0
# A multi-host node must bind to --ip, not to loopback (this variable would force 127.0.0.1).
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER

args=(--block --node-ip-address="$ip" --num-cpus="$cpus" --disable-usage-stats)
if [[ "$slots" != 0 ]]; then args+=(--resources="{\"loadgen\": $slots}"); fi
[[ -n "${LOADGEN_RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir="$LOADGEN_RAY_TEMP_DIR")
if [[ "$role" == head ]]; then
  args+=(--head --port="$port" --include-dashboard=false)
else
  args+=(--address="$address")
fi

ray start "${args[@]}" >"$log" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

# Bounded wait for the node to come up (or for ray start to fail).
deadline=$((SECONDS + ${LOADGEN_NODE_START_TIMEOUT_S:-120}))
until grep -q "Ray runtime started" "$log" 2>/dev/null; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "cluster_start.sh: ray start for '$name' exited; its log ($log):" >&2
    tail -n 40 "$log" >&2
    rm -f "$pidfile"
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "cluster_start.sh: node '$name' not up after ${LOADGEN_NODE_START_TIMEOUT_S:-120} s; see $log" >&2
    exit 1
  fi
  sleep 0.5
done
if [[ "$role" == head ]]; then
  echo "head node up at $ip:$port (pid $pid, log $log); join workers with: scripts/cluster_start.sh worker --ip IP --address $ip:$port"
else
  echo "worker node '$name' up at $ip, joined $address with $slots loadgen slot(s) (pid $pid, log $log)"
fi
