-- Orchestrator state. One row per saga; the engine's whole state is `state` (JSON), with the
-- columns the driver queries by (status, next_run_at, lease) kept beside it.

CREATE TABLE definitions (
    name        text        NOT NULL,
    version     text        NOT NULL,               -- hex SHA-256 of the canonical JSON
    body        jsonb       NOT NULL,
    seq         bigserial   NOT NULL,               -- load order: the newest is current
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE sagas (
    id           uuid        PRIMARY KEY,           -- v7: time-ordered, used as list cursor
    definition   text        NOT NULL,
    version      text        NOT NULL,
    business_key text,
    input        jsonb       NOT NULL,
    input_hash   text        NOT NULL,
    status       text        NOT NULL,
    state        jsonb       NOT NULL,
    -- When a driver must look at the saga again: now() while a call is in flight (so that
    -- another instance resumes it once the lease expires), the retry time while waiting,
    -- NULL once completed / compensated / failed.
    next_run_at  timestamptz,
    lease_owner  text,
    lease_until  timestamptz,                       -- database clock, never a process clock
    lease_epoch  bigint      NOT NULL DEFAULT 0,    -- fencing: every state write checks it
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (definition, version) REFERENCES definitions (name, version)
);

-- At most one saga per (definition, business key).
CREATE UNIQUE INDEX sagas_business_key ON sagas (definition, business_key)
    WHERE business_key IS NOT NULL;
CREATE INDEX sagas_due ON sagas (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX sagas_status_id ON sagas (status, id);

CREATE TABLE saga_events (
    seq      bigserial   PRIMARY KEY,
    saga_id  uuid        NOT NULL REFERENCES sagas (id),
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text        NOT NULL,
    step     text,
    detail   jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX saga_events_saga ON saga_events (saga_id, seq);

-- Client idempotency keys of POST /sagas, kept for IDEMPOTENCY_RETENTION (default 24 h).
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash text        NOT NULL,
    saga_id      uuid        NOT NULL REFERENCES sagas (id) DEFERRABLE INITIALLY DEFERRED,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
