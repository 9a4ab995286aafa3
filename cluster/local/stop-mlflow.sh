#!/usr/bin/env bash
# Stop the MLflow tracking server (its store stays; start-mlflow.sh brings it back).
set -uo pipefail
source "$(dirname "$0")/env.sh"
pid_file="$CLUSTER_DIR/mlflow.pid"
if [ -f "$pid_file" ]; then
    pid=$(cat "$pid_file")
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null
    rm -f "$pid_file"
fi
echo "MLflow stopped"
