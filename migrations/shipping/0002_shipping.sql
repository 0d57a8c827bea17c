-- Shipping: shipments created by saga actions and cancelled by their compensations.
-- Version 1 of this database is the saga barrier table, which the kit adds to the migrator
-- (tandem_kit::barrier::DDL), so these files are numbered from 2.

CREATE TABLE shipments (
    id             uuid        PRIMARY KEY,
    order_id       text        NOT NULL,
    -- the saga call that made it: its cancellation finds it from its Idempotency-Key alone
    saga_id        text        NOT NULL,
    step           text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('created', 'cancelled')),
    -- {"name", "line1", "city", "postal_code", "country"}
    address        jsonb       NOT NULL,
    -- [{"sku", "quantity"}]
    items          jsonb       NOT NULL,
    reservation_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    UNIQUE (saga_id, step)
);

CREATE INDEX shipments_order_id ON shipments (order_id, created_at);
