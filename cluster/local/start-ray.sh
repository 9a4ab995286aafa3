#!/usr/bin/env bash
# Start a real multi-node Ray cluster on this machine: a head and RAY_WORKERS worker nodes, each
# its own raylet with its own resources (custom resource "node_<i>" = 1), all on 127.0.0.1.
# Token authentication is on (RAY_AUTH_MODE=token): the token is ~/.ray/auth_token, generated on
# first start and left readable by its owner only; clients read it from there or RAY_AUTH_TOKEN.
# Every node starts with the variables of $CLUSTER_SECRETS in its environment (see env.sh).
set -euo pipefail
source "$(dirname "$0")/env.sh"
RAY="$PYTHON_BIN/ray"
# Ray starts a head whose job agent cannot bind its port without a word (the agent stays up with
# its HTTP service off), and every submission then fails with "No available agent to submit job".
require_free_port "$RAY_AGENT_PORT" RAY_AGENT_PORT

"$RAY" get-auth-token --generate >/dev/null 2>&1 || true
token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
[ -f "$token_file" ] && chmod 600 "$token_file"
load_secrets

# --block keeps `ray start` in the foreground, so that every process of this head descends from
# the pid in ray-head.pid: stop-ray.sh stops those, and no other Ray on the machine.
nohup "$RAY" start --head --block --disable-usage-stats \
    --node-ip-address "$BIND_HOST" --port "$RAY_PORT" \
    --dashboard-host "$BIND_HOST" --dashboard-port "$RAY_DASHBOARD_PORT" \
    --ray-client-server-port "$RAY_CLIENT_PORT" --dashboard-agent-listen-port "$RAY_AGENT_PORT" \
    --num-cpus "$RAY_HEAD_CPUS" --num-gpus 0 --resources '{"node_head": 1}' \
    --min-worker-port 21000 --max-worker-port 21999 \
    >"$CLUSTER_DIR/logs/ray-head.log" 2>&1 &
head=$!
echo "$head" >"$CLUSTER_DIR/ray-head.pid"
if ! wait_for_port "$RAY_DASHBOARD_PORT" 60 "$head" || ! wait_for_port "$RAY_AGENT_PORT" 60 "$head"; then
    # the job agent too: without it no job can be submitted
    tail -n 20 "$CLUSTER_DIR/logs/ray-head.log" >&2
    exit 1
fi

for ((i = 1; i <= RAY_WORKERS; i++)); do
    "$(dirname "$0")/start-node.sh" "$i"
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
