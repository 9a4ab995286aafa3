#!/usr/bin/env bash
# Stop the local Ray cluster (every Ray process of this user on this machine).
set -uo pipefail
source "$(dirname "$0")/env.sh"
"$PYTHON_BIN/ray" stop --force >/dev/null 2>&1
rm -f "$CLUSTER_DIR"/ray-worker-*.pid
echo "Ray stopped"
