-- Inventory on SQLite: migrations/inventory/ (both files) in SQLite's types.

CREATE TABLE stock (
    sku        TEXT    PRIMARY KEY,
    -- never negative: reservations decrement with a conditional UPDATE, this is the backstop
    available  INTEGER NOT NULL CHECK (available >= 0),
    reserved   INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);

CREATE TABLE reservations (
    id          BLOB    PRIMARY KEY,
    order_id    TEXT    NOT NULL,
    saga_id     TEXT    NOT NULL,
    step        TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('held', 'released')),
    -- [{"sku", "quantity"}], one entry per SKU, sorted by SKU (JSON text)
    items       TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    released_at TEXT,
    -- the 2PC transaction (always NULL here: 2PC needs Postgres)
    txn_id      BLOB,
    UNIQUE (saga_id, step)
);

CREATE INDEX reservations_order_id ON reservations (order_id, created_at);
