#!/bin/sh
# First start of compose.yaml's Postgres (docker-entrypoint-initdb.d runs this once, on an empty
# data directory): the login role Tandem uses — not a superuser, no CREATEDB — and the seven
# databases it owns. Tandem creates a missing database itself only when its role may; with the
# databases made here it never needs to. See docs/deployment.md, "Postgres".
set -eu
: "${TANDEM_DB_PASSWORD:?TANDEM_DB_PASSWORD must be set to the password of the tandem role}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v tandem_password="$TANDEM_DB_PASSWORD" <<'SQL'
CREATE ROLE tandem LOGIN PASSWORD :'tandem_password';
CREATE DATABASE tandem_orchestrator OWNER tandem;
CREATE DATABASE tandem_inventory OWNER tandem;
CREATE DATABASE tandem_payment OWNER tandem;
CREATE DATABASE tandem_shipping OWNER tandem;
CREATE DATABASE tandem_acceptor_0 OWNER tandem;
CREATE DATABASE tandem_acceptor_1 OWNER tandem;
CREATE DATABASE tandem_acceptor_2 OWNER tandem;
CREATE DATABASE tandem_orders OWNER tandem;
SQL
