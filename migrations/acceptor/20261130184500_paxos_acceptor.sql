-- A Paxos Commit acceptor's durable state (services/acceptor): per transaction, one slot per
-- participant's instance — the ballot promised and the (ballot, value) accepted — as the
-- `tandem_protocols::paxos_commit::Record::Acceptor` snapshot the core forces. The row is
-- written and committed before the acceptor answers (persist, then send).
CREATE TABLE paxos_acceptor (
    txn_id     uuid        PRIMARY KEY,
    n          smallint    NOT NULL CHECK (n BETWEEN 1 AND 64),
    slots      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
