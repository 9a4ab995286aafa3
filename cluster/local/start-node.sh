#!/usr/bin/env bash
# Start worker node N of the local Ray cluster (start-ray.sh starts 1..RAY_WORKERS; run it again
# after stop-node.sh N to bring a killed node back). The head must be running.
set -euo pipefail
source "$(dirname "$0")/env.sh"
i=${1:?usage: start-node.sh N}
load_secrets  # trials reading s3:// data need the object store's login on every node
# Distinct port ranges: several raylets share one IP address here.
base=$((22000 + i * 1000))
# Each node unpacks jobs' working directories under its own temp dir: sharing the head's would
# let one node re-extract a package under another node's running processes.
# --block keeps `ray start` in the foreground; its pid is the node's handle for stop-node.sh.
nohup "$PYTHON_BIN/ray" start --block --disable-usage-stats \
    --address "$BIND_HOST:$RAY_PORT" --node-ip-address "$BIND_HOST" --temp-dir "${TMPDIR:-/tmp}/ray-node-$i" \
    --num-cpus "$RAY_WORKER_CPUS" --num-gpus "$RAY_WORKER_GPUS" --resources "{\"node_$i\": 1}" \
    --node-manager-port "$base" --object-manager-port $((base + 1)) \
    --dashboard-agent-grpc-port $((base + 2)) --dashboard-agent-listen-port $((base + 3)) \
    --metrics-export-port $((base + 4)) --runtime-env-agent-port $((base + 5)) \
    --min-worker-port $((base + 100)) --max-worker-port $((base + 999)) \
    >"$CLUSTER_DIR/logs/ray-worker-$i.log" 2>&1 &
echo $! >"$CLUSTER_DIR/ray-worker-$i.pid"
