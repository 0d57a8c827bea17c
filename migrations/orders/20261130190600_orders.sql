-- Orders: the entry point of the choreographed checkout. One row per placed order, moved
-- forward by the events it sees (never backward: `rank` only grows). The outbox table comes
-- from the kit (tandem_kit::choreo::outbox::DDL).

CREATE TABLE orders (
    id          text        PRIMARY KEY,
    -- the order as placed (every event carries it) and the placing request's trace
    body        jsonb       NOT NULL,
    trace_id    text        NOT NULL,
    -- running | compensating | completed | compensated
    status      text        NOT NULL CHECK (status IN ('running', 'compensating', 'completed', 'compensated')),
    last_event  text        NOT NULL,
    rank        smallint    NOT NULL,
    -- when the step in progress times out (running orders only): the entry point owns the timer
    deadline    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX orders_overdue ON orders (deadline) WHERE status = 'running';
