#!/usr/bin/env bash
# Kill worker node N of the local cluster the hard way (SIGKILL to its raylet, its workers and
# agents), as a machine failure would: `stop-node.sh 1`. `start-node.sh 1` brings it back.
set -euo pipefail
source "$(dirname "$0")/env.sh"
i=${1:?usage: stop-node.sh N}
base=$((22000 + i * 1000))
pid_file="$CLUSTER_DIR/ray-worker-$i.pid"
raylet=$(pgrep -f "raylet.*--node_manager_port=$base( |$)" || true)
[ -n "$raylet" ] || { echo "worker node $i is not running" >&2; exit 1; }
block=$(cat "$pid_file" 2>/dev/null || true)
# shellcheck disable=SC2086
victims=$(descendants $block "$raylet" | sort -u)  # the raylet descends from `ray start --block`
# shellcheck disable=SC2086
kill -9 $victims 2>/dev/null || true
rm -f "$pid_file"
echo "killed worker node $i (raylet $raylet)"
