-- Inventory: stock per SKU and the reservations saga actions make.
-- Version 1 of this database is the saga barrier table, which the kit adds to the migrator
-- (tandem_kit::barrier::DDL), so these files are numbered from 2.

CREATE TABLE stock (
    sku        text        PRIMARY KEY,
    -- never negative: reservations decrement with a conditional UPDATE, this is the backstop
    available  bigint      NOT NULL CHECK (available >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    id          uuid        PRIMARY KEY,
    order_id    text        NOT NULL,
    -- the saga call that made it: its compensation finds it from its Idempotency-Key alone
    saga_id     text        NOT NULL,
    step        text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('held', 'released')),
    -- [{"sku", "quantity"}], one entry per SKU, sorted by SKU
    items       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    UNIQUE (saga_id, step)
);

CREATE INDEX reservations_order_id ON reservations (order_id, created_at);
