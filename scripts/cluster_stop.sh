#!/usr/bin/env bash
# Stop Ray nodes started by scripts/cluster_start.sh on this machine: the named ones, or all of them.
#
#   scripts/cluster_stop.sh [NAME ...]      # NAME: head, worker-IP, or the --name given at start
#
# Each node is stopped through the pid cluster_start.sh recorded in $LOADGEN_CLUSTER_DIR
# (default /tmp/loadgen-cluster): SIGTERM makes `ray start --block` shut down its own
# Ray processes; after a bounded wait it gets SIGKILL. Other Ray instances on the machine
# are left alone (this script never runs `ray stop`, which stops every Ray on the host).
set -euo pipefail

state="${LOADGEN_CLUSTER_DIR:-/tmp/loadgen-cluster}"
timeout_s="${LOADGEN_NODE_STOP_TIMEOUT_S:-30}"
shopt -s nullglob
if [[ $# -gt 0 ]]; then
  pidfiles=()
  for name in "$@"; do pidfiles+=("$state/$name.pid"); done
else
  # Workers first, the head last: workers leave a live cluster instead of reporting its loss.
  pidfiles=()
  for f in "$state"/*.pid; do [[ "$(basename "$f")" == head.pid ]] || pidfiles+=("$f"); done
  [[ -f "$state/head.pid" ]] && pidfiles+=("$state/head.pid")
fi

status=0
for pidfile in "${pidfiles[@]}"; do
  name="$(basename "$pidfile" .pid)"
  if [[ ! -f "$pidfile" ]]; then
    echo "cluster_stop.sh: no node '$name' in $state" >&2
    status=1
    continue
  fi
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    deadline=$((SECONDS + timeout_s))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster_stop.sh: node '$name' (pid $pid) still up after ${timeout_s} s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stopped node '$name' (pid $pid)"
  fi
  rm -f "$pidfile"
done
exit "$status"
