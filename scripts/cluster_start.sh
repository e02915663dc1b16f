#!/usr/bin/env bash
# Start one Ray node for loadgen: the head, or a worker joining it. Run it once per machine.
#
#   scripts/cluster_start.sh head   --ip 10.0.0.1 [--port 6379] [--cpus N] [--slots N] [--no-dashboard]
#   scripts/cluster_start.sh worker --ip 10.0.0.2 --address 10.0.0.1:6379 [--cpus N] [--slots N]
#
# --ip      the address this node is reached at (ray start --node-ip-address). Ray advertises
#           it, and the dashboard and the agents listen on it; with a loopback --ip (127.0.0.1,
#           a cluster inside one machine) every Ray process listens on loopback only. On any
#           other address Ray 2.60's GCS, raylet, object manager and workers listen on all
#           interfaces (no Ray flag binds them): keep the nodes on a private network.
# --cpus    logical CPUs Ray may hand out on this node (default: all cores).
# --slots   loadgen worker slots, advertised as the custom resource {"loadgen": N}
#           (default: --cpus on a worker, 0 on the head: the driver runs there).
#           Run loadgen with cluster.node_resource=loadgen to place workers only on
#           nodes with slots, one per slot.
# --no-dashboard  head only: no dashboard (then no `ray job submit`). It is on by default
#           when Ray's dashboard dependencies are installed (pip install 'ray[default]'),
#           listening on --ip at --dashboard-port (default 8265).
# --name    a name for this node's pid and log files (default: head / worker-IP).
#
# Token authentication (Ray's RAY_AUTH_MODE=token) is on unless RAY_AUTH_MODE says otherwise.
# The head uses $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH if set, else creates
# $LOADGEN_CLUSTER_DIR/auth_token (mode 600) once, and prints the one `export` line the
# driver, `ray job submit` and every worker node need; a worker refuses to start without it.
#
# The node runs `ray start --block` in the background; its pid goes to
# $LOADGEN_CLUSTER_DIR/NAME.pid (default /tmp/loadgen-cluster) so scripts/cluster_stop.sh
# stops exactly this node (and leaves any other Ray alone). No usage statistics.
set -euo pipefail

usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

role="${1:-}"; [[ "$role" == head || "$role" == worker ]] || usage
shift
ip="" address="" port=6379 cpus="" slots="" name="" dashboard=auto dashboard_port="${LOADGEN_DASHBOARD_PORT:-8265}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ip) ip="$2"; shift 2 ;;
    --address) address="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --slots) slots="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --no-dashboard) dashboard=off; shift ;;
    --dashboard-port) dashboard_port="$2"; shift 2 ;;
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
# A multi-host node must advertise --ip, not loopback (this variable would force 127.0.0.1, and
# `ray start` refuses to start a worker node with it).
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
ray_start=(ray start)
if [[ "$ip" == 127.0.0.1 || "$ip" == localhost ]]; then
  # Every Ray process of a loopback node (and a driver or job started from it) must keep 127.0.0.1:
  # with this variable unset Ray replaces it with this machine's external address, then its GCS and
  # raylet listen on every interface and the dashboard agent cannot reach the GCS (job submission
  # hangs). `ray start` itself refuses to start a worker node with the variable set, so only that
  # command runs with Ray's multi-node check on and the address taken as given.
  ip=127.0.0.1
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  ray_start=(python -c 'import sys
from ray._private import ray_constants
import ray._private.services as services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()' start)
fi

# Token authentication: the same token on every node, the driver and `ray job submit`.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
token_export=""
if [[ "$RAY_AUTH_MODE" == token ]]; then
  if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
    token_export="export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the token you set>"
  elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || { echo "cluster_start.sh: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 2; }
    token_export="export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")"
  elif [[ "$role" == head ]]; then
    token_file="$state/auth_token"
    if [[ ! -s "$token_file" ]]; then
      (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' >"$token_file")
    fi
    export RAY_AUTH_TOKEN_PATH="$(cd "$state" && pwd)/auth_token"
    token_export="export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
  else
    echo "cluster_start.sh: the cluster uses token authentication: run the \`export RAY_AUTH_MODE=token ...\` line the head printed (with its token file copied to this machine) before starting a worker, or set RAY_AUTH_MODE=disabled on every node" >&2
    exit 2
  fi
fi

args=(--block --node-ip-address="$ip" --num-cpus="$cpus" --disable-usage-stats)
if [[ "$slots" != 0 ]]; then args+=(--resources="{\"loadgen\": $slots}"); fi
if [[ "$ip" == 127.0.0.1 ]]; then
  # Nodes sharing one address each need their own dashboard-agent HTTP port (Ray's default is one
  # fixed port, 52365): without it the second node's job agent cannot listen and job submission hangs.
  args+=(--dashboard-agent-listen-port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
fi
[[ -n "${LOADGEN_RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir="$LOADGEN_RAY_TEMP_DIR")
if [[ "$role" == head ]]; then
  args+=(--head --port="$port")
  if [[ "$dashboard" == auto ]]; then
    missing="$(python -c 'import ray._private.utils as u; print(u.get_dashboard_dependency_error() or "")' 2>/dev/null || echo "ray not importable")"
    if [[ -n "$missing" ]]; then
      echo "cluster_start.sh: no dashboard (so no \`ray job submit\`): $missing; pip install 'ray[default]' to have it" >&2
      dashboard=off
    else
      dashboard=on
    fi
  fi
  if [[ "$dashboard" == on ]]; then
    args+=(--include-dashboard=true --dashboard-host="$ip" --dashboard-port="$dashboard_port")
  else
    args+=(--include-dashboard=false)
  fi
else
  args+=(--address="$address")
fi

"${ray_start[@]}" "${args[@]}" >"$log" 2>&1 &
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
  [[ "$dashboard" == on ]] && echo "dashboard and job submission at http://$ip:$dashboard_port (ray job submit --address http://$ip:$dashboard_port -- loadgen cluster=ray ...)"
else
  echo "worker node '$name' up at $ip, joined $address with $slots loadgen slot(s) (pid $pid, log $log)"
fi
if [[ -n "$token_export" ]]; then
  echo "run this in every shell that starts a worker node, loadgen or ray job submit (copy the token file to the other machines first):"
  echo "$token_export"
fi
