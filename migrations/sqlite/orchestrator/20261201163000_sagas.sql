-- The orchestrator's saga store on SQLite (the embedded store; Postgres's schema is in
-- migrations/orchestrator/). Same tables and columns as on Postgres, in SQLite's types:
--   uuid        -> BLOB (16 bytes: UUIDv7 ids compare bytewise in creation order)
--   jsonb       -> TEXT (JSON text)
--   timestamptz -> TEXT, always '%Y-%m-%dT%H:%M:%fZ' (UTC, milliseconds), written by SQL as
--                  strftime('%Y-%m-%dT%H:%M:%fZ', 'now') and by Rust in the same format, so
--                  text comparison orders times correctly.
-- No transactions tables: 2PC / 3PC / Paxos Commit need Postgres (prepared transactions on
-- the services), and POST /transactions says so on SQLite.

CREATE TABLE definitions (
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (name, version)
);
CREATE UNIQUE INDEX definitions_seq ON definitions (seq);

CREATE TABLE sagas (
    id           BLOB    PRIMARY KEY,
    definition   TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    business_key TEXT,
    input        TEXT    NOT NULL,
    input_hash   TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    next_run_at  TEXT,
    lease_owner  TEXT,
    lease_until  TEXT,
    lease_epoch  INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    FOREIGN KEY (definition, version) REFERENCES definitions (name, version)
);
CREATE UNIQUE INDEX sagas_business_key ON sagas (definition, business_key)
    WHERE business_key IS NOT NULL;
CREATE INDEX sagas_due ON sagas (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX sagas_status_id ON sagas (status, id);
CREATE INDEX sagas_definition_id ON sagas (definition, id);
CREATE INDEX sagas_business_key_search ON sagas (business_key, id) WHERE business_key IS NOT NULL;
CREATE INDEX sagas_lease_owner ON sagas (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE saga_events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id  BLOB    NOT NULL,
    at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    kind     TEXT    NOT NULL,
    step     TEXT,
    detail   TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX saga_events_saga ON saga_events (saga_id, seq);

-- Clients' Idempotency-Keys of POST /sagas.
CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    saga_id      BLOB NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- At most one run per (definition, business key) (kind: 'saga'; transactions need Postgres).
CREATE TABLE business_keys (
    definition   TEXT NOT NULL,
    business_key TEXT NOT NULL,
    kind         TEXT NOT NULL,
    id           BLOB NOT NULL,
    PRIMARY KEY (definition, business_key)
);
