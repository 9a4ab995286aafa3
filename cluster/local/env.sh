# Settings shared by the cluster/local scripts. Override any of them in the environment.
# The Ray dashboard and Jobs API, the MLflow server and PostgreSQL bind to 127.0.0.1 unless you
# change BIND_HOST: a laptop cluster must not be reachable from the network (the Jobs API runs
# arbitrary code for whoever can reach it). Ray's own gRPC ports (GCS, raylets, the client server)
# listen on every interface whatever BIND_HOST says; token authentication guards them.
: "${CLUSTER_DIR:=$PWD/runs/local-cluster}"   # pid files, logs, the MLflow store and artifacts
: "${BIND_HOST:=127.0.0.1}"
: "${RAY_PORT:=6380}"                          # the head's GCS port
: "${RAY_DASHBOARD_PORT:=8265}"                # dashboard and Jobs API
: "${RAY_CLIENT_PORT:=10001}"
: "${RAY_AGENT_PORT:=52365}"                   # the head's job agent (Ray's default): jobs are submitted through it
: "${RAY_WORKERS:=2}"                          # worker nodes besides the head
: "${RAY_HEAD_CPUS:=0}"                        # 0: trials run on the worker nodes only
: "${RAY_WORKER_CPUS:=1}"
: "${RAY_WORKER_GPUS:=0}"
: "${MLFLOW_PORT:=5000}"
: "${MLFLOW_BACKEND:=sqlite}"                  # sqlite or postgresql
: "${MLFLOW_AUTH:=0}"                          # 1: basic authentication (mlflow server --app-name basic-auth)
: "${MLFLOW_ADMIN_PASSWORD:=}"                 # with MLFLOW_AUTH=1; generated when empty
: "${PG_PORT:=5433}"
: "${PYTHON_BIN:=$(dirname "$(command -v python)")}"  # where ray and mlflow are installed

export PATH="$PYTHON_BIN:$PATH"  # jobs run `python` from the raylet's PATH
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED=0
mkdir -p "$CLUSTER_DIR/logs"
CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd)  # absolute: the scripts change directory
# Logins the sweeps' drivers use (MLflow, object storage): NAME=VALUE lines, mode 0600, exported
# into every Ray process this cluster starts, so they never travel with a job (Ray records a job's
# runtime_env in its logs and returns it from the Jobs API). start-mlflow.sh writes the MLflow
# login here; add your own, e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, before start-ray.sh.
: "${CLUSTER_SECRETS:=$CLUSTER_DIR/secrets.env}"

wait_for_port() {  # wait_for_port PORT SECONDS [PID: give up early when it exits]
    local port=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    until (exec 3<>"/dev/tcp/$BIND_HOST/$port") 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "the process meant to listen on $BIND_HOST:$port exited; see $CLUSTER_DIR/logs" >&2
            return 1
        fi
        if ((SECONDS > deadline)); then
            echo "nothing listens on $BIND_HOST:$port after $2 s; see $CLUSTER_DIR/logs" >&2
            return 1
        fi
        sleep 0.5
    done
}

descendants() {  # descendants PID...: the PIDs and every process below them
    local pid
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null || continue
        echo "$pid"
        # shellcheck disable=SC2046
        descendants $(pgrep -P "$pid")
    done
}

stop_tree() {  # stop_tree PID...: SIGTERM the processes and all below them, SIGKILL what is left after 10 s
    local victims
    victims=$(descendants "$@" | sort -u)
    [ -n "$victims" ] || return 0
    # shellcheck disable=SC2086
    kill -TERM $victims 2>/dev/null
    local deadline=$((SECONDS + 10)) alive
    while ((SECONDS < deadline)); do
        alive=$(for pid in $victims; do
            case $(ps -o stat= -p "$pid" 2>/dev/null) in "" | Z*) ;; *) echo "$pid" ;; esac
        done)
        [ -n "$alive" ] || return 0
        sleep 0.5
    done
    # shellcheck disable=SC2086
    kill -KILL $alive 2>/dev/null
    return 0
}

require_free_port() {  # require_free_port PORT NAME: refuse to start over a port another process holds
    if (exec 3<>"/dev/tcp/$BIND_HOST/$1") 2>/dev/null; then
        echo "$BIND_HOST:$1 ($2) is taken, by another Ray instance perhaps; set $2 to a free port" >&2
        return 1
    fi
}

set_secret() {  # set_secret NAME VALUE: add or replace NAME in $CLUSTER_SECRETS (never readable by others)
    local tmp
    tmp=$(mktemp "$CLUSTER_SECRETS.XXXXXX")  # mktemp creates it 0600
    if [ -f "$CLUSTER_SECRETS" ]; then grep -v "^$1=" "$CLUSTER_SECRETS" >"$tmp" || true; fi
    printf '%s=%q\n' "$1" "$2" >>"$tmp"
    mv "$tmp" "$CLUSTER_SECRETS"
}

load_secrets() {  # export the variables of $CLUSTER_SECRETS; refuse a file others can read
    [ -f "$CLUSTER_SECRETS" ] || return 0
    local mode
    mode=$(stat -c %a "$CLUSTER_SECRETS")
    if [ "${mode: -2}" != 00 ]; then
        echo "$CLUSTER_SECRETS is mode $mode: others can read its secrets; chmod 600 it" >&2
        return 1
    fi
    set -a
    # shellcheck disable=SC1090
    source "$CLUSTER_SECRETS"
    set +a
}
