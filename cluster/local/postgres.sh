#!/usr/bin/env bash
# Start (creating on first use) a PostgreSQL server on $BIND_HOST:$PG_PORT with a database and
# role "mlflow"; prints the SQLAlchemy URI for MLflow's backend store. Uses Debian's packages
# (postgresql); as root it runs the server as the "postgres" user, which PostgreSQL requires.
# The database lives in PG_DATA: $CLUSTER_DIR/postgres, or as root (the postgres user cannot
# enter root's folders) /var/lib/metasweep/postgres-$PG_PORT, never under /tmp, which is cleaned.
# A database this cluster created once is never created again: if its folder has gone, the
# script stops rather than bring MLflow up on an empty store.
set -euo pipefail
source "$(dirname "$0")/env.sh"
as_owner=()
if [ "$(id -u)" = 0 ]; then
    as_owner=(runuser -u postgres --)
    : "${PG_DATA:=/var/lib/metasweep/postgres-$PG_PORT}"
fi
: "${PG_DATA:=$CLUSTER_DIR/postgres}"
data=$PG_DATA
marker="$CLUSTER_DIR/postgres.dir"  # written once the database exists
if [ -s "$marker" ] && [ ! -s "$(cat "$marker")/PG_VERSION" ]; then
    echo "the PostgreSQL database of this cluster, $(cat "$marker"), is gone; refusing to start" \
        "MLflow on an empty store. Restore it, or delete $marker to start afresh" >&2
    exit 1
fi
if [ -d "$data" ] && [ ! -s "$data/PG_VERSION" ] && [ -n "$(ls -A "$data")" ]; then
    echo "$data holds files but no PostgreSQL database; refusing to initialise over it" >&2
    exit 1
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/pg_ctl" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
cd /  # the postgres user may not enter the caller's directory
password_file="$CLUSTER_DIR/postgres_password"
if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data" && chmod 700 "$data"
    "${as_owner[@]}" "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    (umask 077; "$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_hex(16))' >"$password_file")
    fresh=1
fi
if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -w -l "$data/server.log" \
        -o "-c listen_addresses=$BIND_HOST -p $PG_PORT -k $data" start >/dev/null
fi
if [ "${fresh:-0}" = 1 ]; then
    # The password goes in on stdin (printf is a builtin): no command line ever shows it.
    printf "CREATE ROLE mlflow LOGIN PASSWORD '%s';\nCREATE DATABASE mlflow OWNER mlflow;\n" \
        "$(cat "$password_file")" | "${as_owner[@]}" "$bin/psql" -h "$data" -p "$PG_PORT" -U postgres -q -v ON_ERROR_STOP=1
fi
echo "$data" >"$CLUSTER_DIR/postgres.dir"
echo "postgresql+psycopg2://mlflow:$(cat "$password_file")@$BIND_HOST:$PG_PORT/mlflow"
