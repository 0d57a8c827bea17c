-- Payment on SQLite: migrations/payment/ (both files) in SQLite's types.

CREATE TABLE payments (
    id           BLOB    PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('charge', 'refund')),
    order_id     TEXT    NOT NULL,
    customer_id  TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency     TEXT    NOT NULL,
    saga_id      TEXT    NOT NULL,
    step         TEXT    NOT NULL,
    -- for a refund: the charge it refunds
    charge_id    BLOB    REFERENCES payments (id),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    -- the 2PC transaction (always NULL here: 2PC needs Postgres)
    txn_id       BLOB,
    UNIQUE (saga_id, step, kind),
    CHECK ((kind = 'refund') = (charge_id IS NOT NULL))
);

-- A charge is refunded at most once, whatever the key.
CREATE UNIQUE INDEX payments_one_refund_per_charge ON payments (charge_id) WHERE kind = 'refund';
CREATE INDEX payments_order_id ON payments (order_id, created_at);
