#!/usr/bin/env bash
# schemathesis (PyPI) against the orchestrator and a service (inventory), each started here from
# the debug binaries with fault injection off, on databases of their own (dropped afterwards):
# every check (no 5xx, status codes / content types / headers / bodies as documented, bad input
# refused, valid input accepted (`positive_data_acceptance`), unsupported methods, …), a bounded
# number of examples (.ci/schemathesis.toml). Where an operation checks a rule no JSON Schema
# states (a definition that must exist, fields that depend on each other), the config accepts
# 422 for that operation alone and says why (docs/api.md, "Checks"). Phases: examples, coverage
# (boundary values of every schema; it failed with a KeyError of schemathesis's own while the
# documents had dangling `$ref`s) and fuzzing. One worker: with two, CPython 3.11 failed inside
# hypothesis's `ast.parse` in 2 runs of ~10 (`SystemError: AST constructor recursion depth
# mismatch`, as two threads parsing at once would; python/cpython#106905), and a second worker
# bought no time on two cores. Installs
# schemathesis into a venv under target/ once. No state is kept between runs (the config's
# `[cache]`). `SCHEMATHESIS_SEED` picks the seed (default 1). Fails on any failure it reports.
set -euo pipefail
started=$(date +%s)
venv=target/schemathesis-venv
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$version"
fi
cargo build -q --locked -p orchestrator -p inventory --bins

pg=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
pg_base=${pg%/*}
tag="tandem_st_$$"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for db in "${tag}_orchestrator" "${tag}_inventory"; do
        # a prepared transaction (a 2PC prepare schemathesis made valid) would block the drop
        for gid in $(psql -Atq "$pg_base/$db" -c "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()" 2>/dev/null); do
            psql -q "$pg_base/$db" -c "ROLLBACK PREPARED '$gid'" || true
        done
        psql -q "$pg" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    done
}
trap cleanup EXIT

wait_up() {
    for _ in $(seq 1 100); do
        curl -sf "$1/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not come up" >&2
    return 1
}

inv_port=$(free_port)
DATABASE_URL="$pg_base/${tag}_inventory" LISTEN_ADDR="127.0.0.1:$inv_port" DB_POOL_SIZE=3 \
    CONTROL_POOL_SIZE=1 FAULT_INJECTION=off RUST_LOG=warn target/debug/inventory &
pids+=($!)
orch_port=$(free_port)
DATABASE_URL="$pg_base/${tag}_orchestrator" LISTEN_ADDR="127.0.0.1:$orch_port" DB_POOL_SIZE=4 \
    INVENTORY_URL="http://127.0.0.1:$inv_port" PAYMENT_URL="http://127.0.0.1:$inv_port" \
    SHIPPING_URL="http://127.0.0.1:$inv_port" RUST_LOG=warn target/debug/orchestrator &
pids+=($!)
wait_up "http://127.0.0.1:$inv_port"
wait_up "http://127.0.0.1:$orch_port"

status=0
for url in "http://127.0.0.1:$orch_port" "http://127.0.0.1:$inv_port"; do
    echo "--- schemathesis $url"
    "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "$url/openapi.json" \
        --checks all --workers 1 --seed "${SCHEMATHESIS_SEED:-1}" --no-color --phases examples,coverage,fuzzing \
        || status=1
done
echo "schemathesis step: $(($(date +%s) - started)) s"
exit "$status"
