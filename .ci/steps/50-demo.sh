#!/usr/bin/env bash
# The README's demo command, twice (exits non-zero if any scenario ends unexpectedly):
# 1. as a newcomer runs it, `cargo demo`: the embedded store (SQLite files in .tandem/demo), with
#    Postgres stopped so that nothing can quietly lean on it;
# 2. on Postgres (`--database-url`), the production store.
set -euo pipefail

cluster_ctl() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main "$1"; }
wait_postgres() {
    for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -q && return 0; sleep 1; done
    pg_isready -h 127.0.0.1
}

# Build first: the step times the demo, not the compiler.
cargo build -q -p tandem-cli --bin tandem

echo "---- cargo demo (SQLite; Postgres stopped)"
cluster_ctl stop
trap 'cluster_ctl start; wait_postgres' EXIT
if pg_isready -h 127.0.0.1 -q; then
    echo "Postgres is still reachable: the SQLite demo would not prove anything"
    exit 1
fi
start=$(date +%s)
cargo demo
echo "SQLite demo: $(($(date +%s) - start)) s"
cluster_ctl start
wait_postgres
trap - EXIT

echo "---- cargo demo --database-url … (Postgres)"
start=$(date +%s)
cargo demo --database-url "${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
echo "Postgres demo: $(($(date +%s) - start)) s"
