#!/usr/bin/env bash
# Start an MLflow tracking server on $BIND_HOST:$MLFLOW_PORT: backend store SQLite or PostgreSQL
# (MLFLOW_BACKEND), artifacts served by the server itself (--serve-artifacts) from a local folder,
# and with MLFLOW_AUTH=1 basic authentication (admin user "admin", password printed once and kept
# in $CLUSTER_DIR/mlflow/admin_password). Running it again after stop-mlflow.sh reuses the store.
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

args=(--host "$BIND_HOST" --port "$MLFLOW_PORT" --workers 1
      --backend-store-uri "$store" --artifacts-destination "$state/artifacts" --serve-artifacts)
if [ "$MLFLOW_AUTH" = 1 ]; then
    password_file="$state/admin_password"
    if [ ! -s "$password_file" ]; then
        (umask 077; printf '%s' "${MLFLOW_ADMIN_PASSWORD:-$("$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))')}" >"$password_file")
    fi
    cat >"$state/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$state/basic_auth.db
admin_username = admin
admin_password = $(cat "$password_file")
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    chmod 600 "$state/basic_auth.ini"
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
