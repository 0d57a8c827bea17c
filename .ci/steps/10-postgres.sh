#!/usr/bin/env bash
# Services the tests use: Postgres (with prepared transactions for two-phase commit) and NATS
# with JetStream; then the databases earlier test runs left behind are dropped.
set -euo pipefail

psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
cluster_ctl() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main "$1"; }
wait_postgres() {
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -q && return 0; sleep 1; done
    pg_isready -h 127.0.0.1
}

if ! pg_isready -h 127.0.0.1 -q; then
    cluster_ctl start
fi
wait_postgres

# Two-phase commit needs prepared transactions: at least 256 (a restart applies it). CI only —
# tests never reconfigure the server.
mpt=$(psql_admin -Atc "SHOW max_prepared_transactions")
if [ "$mpt" -lt 256 ]; then
    echo "max_prepared_transactions is $mpt: setting 256 and restarting Postgres"
    psql_admin -qc "ALTER SYSTEM SET max_prepared_transactions = 256"
    cluster_ctl restart
    wait_postgres
fi
echo "max_prepared_transactions = $(psql_admin -Atc "SHOW max_prepared_transactions")"

# NATS with JetStream on 127.0.0.1:4222 (the choreography tests also start private servers from
# the same binary).
if [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server"
    apt-get update -qq && apt-get install -y -qq nats-server
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
    echo "starting NATS"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break; sleep 1; done
fi
(exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null || { echo "NATS is not up on 127.0.0.1:4222"; exit 1; }
echo "NATS up on 127.0.0.1:4222"

# Databases left by earlier (failed) test runs; their prepared transactions first, from inside
# each database (only a session there may finish them), or DROP DATABASE fails. On a server
# shared with other running test suites, TANDEM_CI_KEEP_DATABASES=1 leaves them alone.
if [ "${TANDEM_CI_KEEP_DATABASES:-}" = 1 ]; then
    echo "TANDEM_CI_KEEP_DATABASES=1: leftover test databases kept"
    exit 0
fi
leftovers=$(psql_admin -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tandem\_t\_%'")
for db in $leftovers; do
    for gid in $(psql_admin -Atc "SELECT gid FROM pg_prepared_xacts WHERE database = '$db'"); do
        psql -h 127.0.0.1 -U postgres -d "$db" -qc "ROLLBACK PREPARED '$gid'" || true
    done
    psql_admin -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
done
echo "dropped $(echo "$leftovers" | grep -c . || true) leftover test databases"
