#!/usr/bin/env bash
# Kill worker node N of the local cluster the hard way (SIGKILL to its raylet and workers), as a
# machine failure would: `stop-node.sh 1`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
i=${1:?usage: stop-node.sh N}
base=$((22000 + i * 1000))
pid_file="$CLUSTER_DIR/ray-worker-$i.pid"
raylet=$(pgrep -f "raylet.*--node_manager_port=$base( |$)" || true)
[ -n "$raylet" ] || { echo "worker node $i is not running" >&2; exit 1; }
# The node's Python workers listen in its port range; kill them with the raylet.
workers=$(pgrep -f "ray::|default_worker.py" | while read -r p; do
    tr '\0' ' ' </proc/"$p"/cmdline 2>/dev/null | grep -q -- "--node-manager-port=$base" && echo "$p"; done || true)
kill -9 $raylet $workers 2>/dev/null || true
[ -f "$pid_file" ] && kill -9 "$(cat "$pid_file")" 2>/dev/null || true
rm -f "$pid_file"
echo "killed worker node $i (raylet $raylet)"
