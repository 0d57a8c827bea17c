#!/bin/sh
# First start of compose.yaml's Postgres (docker-entrypoint-initdb.d runs this once, on an empty
# data directory): Tandem's databases, each with an owner role `<database>_owner` that runs the
# migrations and a runtime role `<database>_app` that may only read and write rows of that
# database; CONNECT revoked from PUBLIC. The SQL is deploy/provision.sql, the output of
# `tandem db provision --print --psql-passwords` (a test checks it is current); the passwords
# come from the environment as psql variables. See docs/security.md, "Least privilege in
# Postgres".
set -eu
: "${TANDEM_DB_PASSWORD:?TANDEM_DB_PASSWORD must be set to the password of the runtime roles}"
: "${TANDEM_DB_OWNER_PASSWORD:?TANDEM_DB_OWNER_PASSWORD must be set to the password of the owner roles}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v app_password="$TANDEM_DB_PASSWORD" -v owner_password="$TANDEM_DB_OWNER_PASSWORD" \
    -f /etc/tandem/provision.sql
