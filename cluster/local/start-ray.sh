#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine: a head and RAY_WORKERS worker nodes, each
# its own raylet with its own resources (custom resource "node_<i>" = 1), all on 127.0.0.1.
# Token authentication is on (RAY_AUTH_MODE=token): the token is ~/.ray/auth_token, generated on
# first start; clients read it from there or from RAY_AUTH_TOKEN.
set -euo pipefail
source "$(dirname "$0")/env.sh"
RAY="$PYTHON_BIN/ray"

"$RAY" get-auth-token --generate >/dev/null 2>&1 || true

"$RAY" start --head --disable-usage-stats \
    --node-ip-address "$BIND_HOST" --port "$RAY_PORT" \
    --dashboard-host "$BIND_HOST" --dashboard-port "$RAY_DASHBOARD_PORT" \
    --ray-client-server-port "$RAY_CLIENT_PORT" \
    --num-cpus "$RAY_HEAD_CPUS" --num-gpus 0 --resources '{"node_head": 1}' \
    --min-worker-port 21000 --max-worker-port 21999 \
    >"$CLUSTER_DIR/logs/ray-head.log" 2>&1
wait_for_port "$RAY_DASHBOARD_PORT" 60

for ((i = 1; i <= RAY_WORKERS; i++)); do
    # Distinct port ranges: several raylets share one IP address here.
    base=$((22000 + i * 1000))
    # Each node unpacks jobs' working directories under its own temp dir: sharing the head's
    # would let one node re-extract the package under another's running processes.
    # --block keeps `ray start` in the foreground; its pid is the node's handle for stop-node.sh.
    nohup "$RAY" start --block --disable-usage-stats \
        --address "$BIND_HOST:$RAY_PORT" --node-ip-address "$BIND_HOST" --temp-dir "/tmp/ray-node-$i" \
        --num-cpus "$RAY_WORKER_CPUS" --num-gpus "$RAY_WORKER_GPUS" --resources "{\"node_$i\": 1}" \
        --node-manager-port "$base" --object-manager-port $((base + 1)) \
        --dashboard-agent-grpc-port $((base + 2)) --dashboard-agent-listen-port $((base + 3)) \
        --metrics-export-port $((base + 4)) --runtime-env-agent-port $((base + 5)) \
        --min-worker-port $((base + 100)) --max-worker-port $((base + 999)) \
        >"$CLUSTER_DIR/logs/ray-worker-$i.log" 2>&1 &
    echo $! >"$CLUSTER_DIR/ray-worker-$i.pid"
done

# The cluster is ready when every node has registered.
expected=$((RAY_WORKERS + 1))
deadline=$((SECONDS + 120))
until [ "$("$PYTHON_BIN/python" - "$BIND_HOST:$RAY_PORT" <<'PY'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)" -ge "$expected" ]; do
    if ((SECONDS > deadline)); then
        echo "the Ray cluster did not reach $expected nodes in 120 s; see $CLUSTER_DIR/logs" >&2
        exit 1
    fi
    sleep 1
done
echo "Ray: head + $RAY_WORKERS worker nodes; Jobs API and dashboard at http://$BIND_HOST:$RAY_DASHBOARD_PORT"
