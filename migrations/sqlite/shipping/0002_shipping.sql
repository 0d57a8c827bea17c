-- Shipping on SQLite: migrations/shipping/ (both files) in SQLite's types.

CREATE TABLE shipments (
    id             BLOB    PRIMARY KEY,
    order_id       TEXT    NOT NULL,
    saga_id        TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('created', 'cancelled')),
    -- {"name", "line1", "city", "postal_code", "country"} (JSON text)
    address        TEXT    NOT NULL,
    -- [{"sku", "quantity"}] (JSON text)
    items          TEXT    NOT NULL,
    reservation_id TEXT,
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    cancelled_at   TEXT,
    -- the 2PC transaction (always NULL here: 2PC needs Postgres)
    txn_id         BLOB,
    UNIQUE (saga_id, step)
);

CREATE INDEX shipments_order_id ON shipments (order_id, created_at);
