-- The 2PC coordinator's log (orchestrator/src/commit/). One row per transaction, written at
-- POST /transactions before any Prepare is sent ("log before sending": the Begin record). The
-- decision column is the Commit / Abort record: `commit` is forced (fenced by the lease epoch)
-- before any COMMIT is sent; NULL means no decision is logged, which answers "abort" (presumed
-- abort). The lease columns are those of every leased kind (orchestrator/src/lease.rs).
CREATE TABLE transactions (
    id           uuid        PRIMARY KEY,
    protocol     text        NOT NULL,               -- '2pc'
    definition   text        NOT NULL,
    version      text        NOT NULL,
    business_key text,
    input        jsonb       NOT NULL,
    input_hash   text        NOT NULL,
    request_hash text        NOT NULL,
    -- preparing → committing → committed, or preparing → aborting → aborted
    state        text        NOT NULL,
    decision     text,                               -- NULL | 'commit' | 'abort'
    decided_at   timestamptz,
    -- One entry per participant (a definition step): service, path, vote, state, times, error.
    participants jsonb       NOT NULL,
    next_run_at  timestamptz,
    lease_owner  text,
    lease_until  timestamptz,
    lease_epoch  bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (definition, version) REFERENCES definitions (name, version),
    CHECK (decision IN ('commit', 'abort'))
);
CREATE UNIQUE INDEX transactions_business_key ON transactions (definition, business_key)
    WHERE business_key IS NOT NULL;
CREATE INDEX transactions_due ON transactions (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX transactions_state_id ON transactions (state, id);

-- Every message between the coordinator and the participants, with its time.
CREATE TABLE transaction_messages (
    txn_id  uuid        NOT NULL,
    seq     bigserial,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    peer    text        NOT NULL,                    -- participant: '<step index>:<service>'
    dir     text        NOT NULL,                    -- 'out' (coordinator → participant) | 'in'
    kind    text        NOT NULL,                    -- prepare, vote, commit, abort, ack, query, decision
    detail  jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (txn_id, seq)
);

-- Client Idempotency-Keys of POST /transactions (same rules as those of POST /sagas).
CREATE TABLE transaction_keys (
    key            text        PRIMARY KEY,
    request_hash   text        NOT NULL,
    transaction_id uuid        NOT NULL REFERENCES transactions (id) DEFERRABLE INITIALLY DEFERRED,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transaction_keys_created ON transaction_keys (created_at);

-- One business-key namespace for sagas and transactions: order 1001 cannot run as both. Every
-- creation inserts its key here in the statement (or transaction) that creates the saga or the
-- transaction, so two concurrent creations of one key serialise on this primary key.
CREATE TABLE business_keys (
    definition   text NOT NULL,
    business_key text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('saga', 'transaction')),
    id           uuid NOT NULL,
    PRIMARY KEY (definition, business_key)
);
INSERT INTO business_keys (definition, business_key, kind, id)
    SELECT definition, business_key, 'saga', id FROM sagas WHERE business_key IS NOT NULL;
