-- Paxos Commit over the services (orchestrator/src/commit/paxos.rs): a transaction row with
-- protocol 'paxos-commit' is led by the lease holder, whose ballots are (lease epoch, round).
-- The highest ballot a leader started is its only durable state (the core's Record::Ballot),
-- forced here, fenced by the lease epoch, before its phase-1a messages go out.
ALTER TABLE transactions ADD COLUMN paxos_ballot jsonb;
