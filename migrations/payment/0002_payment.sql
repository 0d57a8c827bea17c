-- Payment: every charge and refund, one table (the audit trail is one query).
-- Version 1 of this database is the saga barrier table, which the kit adds to the migrator
-- (tandem_kit::barrier::DDL), so these files are numbered from 2.

CREATE TABLE payments (
    id           uuid        PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('charge', 'refund')),
    order_id     text        NOT NULL,
    customer_id  text        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL,
    -- the saga call that made it: a refund finds its charge from its Idempotency-Key alone
    saga_id      text        NOT NULL,
    step         text        NOT NULL,
    -- for a refund: the charge it refunds
    charge_id    uuid        REFERENCES payments (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (saga_id, step, kind),
    CHECK ((kind = 'refund') = (charge_id IS NOT NULL))
);

-- A charge is refunded at most once, whatever the key.
CREATE UNIQUE INDEX payments_one_refund_per_charge ON payments (charge_id) WHERE kind = 'refund';
CREATE INDEX payments_order_id ON payments (order_id, created_at);
