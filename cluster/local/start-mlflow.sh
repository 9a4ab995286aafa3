#!/usr/bin/env bash
# Start an MLflow tracking server on $BIND_HOST:$MLFLOW_PORT: backend store SQLite or PostgreSQL
# (MLFLOW_BACKEND), artifacts served by the server itself (--serve-artifacts) from a local folder,
# and with MLFLOW_AUTH=1 basic authentication (admin user "admin", password printed once and kept
# in $CLUSTER_DIR/mlflow/admin_password and, for the sweeps' drivers, in $CLUSTER_SECRETS).
# Running it again after stop-mlflow.sh reuses the store. No password reaches a command line:
# the backend store URI goes to the server through its environment.
set -euo pipefail
source "$(dirname "$0")/env.sh"
here=$(cd "$(dirname "$0")" && pwd)
state="$CLUSTER_DIR/mlflow"
mkdir -p "$state/artifacts"

case "$MLFLOW_BACKEND" in
    sqlite) store="sqlite:///$state/mlflow.db" ;;
    postgresql) store=$("$here/postgres.sh") ;;
    *) echo "MLFLOW_BACKEND must be sqlite or postgresql, not $MLFLOW_BACKEND" >&2; exit 2 ;;
esac

export MLFLOW_BACKEND_STORE_URI="$store"  # `ps` shows arguments, not the environment
# No GenAI job runner unless asked for: tracking and the registry do not use it, and it would start
# eight more processes importing MLflow (25 CPU-seconds each start here) and leave its queue's
# files in /dev/shm at every start.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
args=(--host "$BIND_HOST" --port "$MLFLOW_PORT" --workers 1
      --artifacts-destination "$state/artifacts" --serve-artifacts)
if [ "$MLFLOW_AUTH" = 1 ]; then
    password_file="$state/admin_password"
    if [ ! -s "$password_file" ]; then
        (umask 077; printf '%s' "${MLFLOW_ADMIN_PASSWORD:-$("$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))')}" >"$password_file")
    fi
    password=$(cat "$password_file")
    # MLflow reads this file with configparser, where "%" starts an interpolation: write "%%".
    (umask 077; cat >"$state/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///${state//%/%%}/basic_auth.db
admin_username = admin
admin_password = ${password//%/%%}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    )
    chmod 600 "$state/basic_auth.ini"  # in case an older file was more open
    set_secret MLFLOW_TRACKING_USERNAME admin
    set_secret MLFLOW_TRACKING_PASSWORD "$password"
    export MLFLOW_AUTH_CONFIG_PATH="$state/basic_auth.ini"
    # The auth app's CSRF protection needs a key that survives restarts.
    [ -s "$state/secret_key" ] || (umask 077; "$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$state/secret_key")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$state/secret_key")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    args+=(--app-name basic-auth)
fi

# Its own session, so stop-mlflow.sh can end the server with all its worker processes.
setsid nohup "$PYTHON_BIN/mlflow" server "${args[@]}" >>"$CLUSTER_DIR/logs/mlflow.log" 2>&1 &
echo $! >"$CLUSTER_DIR/mlflow.pid"
wait_for_port "$MLFLOW_PORT" 120 "$!"
until "$PYTHON_BIN/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://$BIND_HOST:$MLFLOW_PORT/health" 2>/dev/null; do sleep 0.5; done
echo "MLflow: http://$BIND_HOST:$MLFLOW_PORT (backend store: ${store%%:*}${MLFLOW_AUTH:+, }$([ "$MLFLOW_AUTH" = 1 ] && echo "basic auth, user admin, password in $state/admin_password"))"
