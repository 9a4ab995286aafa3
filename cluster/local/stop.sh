#!/usr/bin/env bash
# Stop everything start.sh started, PostgreSQL included (its data stays).
set -uo pipefail
here=$(dirname "$0")
source "$here/env.sh"
"$here/stop-mlflow.sh"
"$here/stop-ray.sh"
if [ -f "$CLUSTER_DIR/postgres.dir" ]; then
    data=$(cat "$CLUSTER_DIR/postgres.dir")
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1
    else "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1; fi
    echo "PostgreSQL stopped"
fi
