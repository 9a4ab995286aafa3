#!/usr/bin/env bash
# Start (creating on first use) a PostgreSQL server on $BIND_HOST:$PG_PORT with a database and
# role "mlflow"; prints the SQLAlchemy URI for MLflow's backend store. Uses Debian's packages
# (postgresql); as root it runs the server as the "postgres" user, which PostgreSQL requires.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/pg_ctl" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_owner=()
cd /  # the postgres user may not enter the caller's directory
data="$CLUSTER_DIR/postgres"
if [ "$(id -u)" = 0 ]; then
    as_owner=(runuser -u postgres --)
    data="/tmp/metasweep-postgres-$PG_PORT"  # the postgres user cannot enter root's folders
fi
password_file="$CLUSTER_DIR/postgres_password"
if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    "${as_owner[@]}" "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    (umask 077; "$PYTHON_BIN/python" -c 'import secrets; print(secrets.token_hex(16))' >"$password_file")
    fresh=1
fi
if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -w -l "$data/server.log" \
        -o "-c listen_addresses=$BIND_HOST -p $PG_PORT -k $data" start >/dev/null
fi
if [ "${fresh:-0}" = 1 ]; then
    "${as_owner[@]}" "$bin/psql" -h "$data" -p "$PG_PORT" -U postgres -q \
        -c "CREATE ROLE mlflow LOGIN PASSWORD '$(cat "$password_file")'" -c "CREATE DATABASE mlflow OWNER mlflow"
fi
echo "$data" >"$CLUSTER_DIR/postgres.dir"
echo "postgresql+psycopg2://mlflow:$(cat "$password_file")@$BIND_HOST:$PG_PORT/mlflow"
