#!/usr/bin/env bash
# Stop the local Ray cluster: the head and worker nodes start-ray.sh started (the processes that
# descend from the pids in $CLUSTER_DIR/ray-*.pid), and no other Ray on this machine.
set -uo pipefail
source "$(dirname "$0")/env.sh"
pids=()
for pid_file in "$CLUSTER_DIR"/ray-head.pid "$CLUSTER_DIR"/ray-worker-*.pid; do
    [ -f "$pid_file" ] && pids+=("$(cat "$pid_file")")
done
if ((${#pids[@]})); then stop_tree "${pids[@]}"; fi
rm -f "$CLUSTER_DIR"/ray-head.pid "$CLUSTER_DIR"/ray-worker-*.pid
echo "Ray stopped"
