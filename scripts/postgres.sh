#!/usr/bin/env bash
# Installs (if needed) and starts a local PostgreSQL server for the data tests and benches,
# creates the test role and database (idempotent), and prints the line to export.
# Run as root (CI runs it from .ci/run). Usage: eval "$(bash scripts/postgres.sh)"
set -euo pipefail

ROLE=binance_ml
PASSWORD=${BINANCE_ML_TEST_DB_PASSWORD:-binance_ml_test_pw}
DB=binance_ml_test

if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing postgresql..." >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi
VERSION=$(ls /etc/postgresql | sort -n | tail -1)
# "already running" is fine; any other failure shows up as not ready below.
pg_ctlcluster "$VERSION" main start >&2 || true
for _ in $(seq 1 30); do
    su postgres -c "pg_isready -q" && break
    sleep 1
done
if ! su postgres -c "pg_isready -q"; then
    echo "postgres.sh: PostgreSQL $VERSION did not become ready (see /var/log/postgresql/)" >&2
    exit 1
fi

psql_as_postgres() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
    psql_as_postgres "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD' CREATEDB" >&2
else
    psql_as_postgres "ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD' CREATEDB" >&2
fi
# CREATE DATABASE cannot run inside the implicit transaction of a multi-statement -c.
if [ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    psql_as_postgres "CREATE DATABASE $DB OWNER $ROLE" >&2
fi

echo "export BINANCE_ML_TEST_DATABASE_URI=postgresql://$ROLE:$PASSWORD@127.0.0.1:5432/$DB"
