-- Events are only ever inserted together with their saga's row: in the transaction that creates
-- the saga, or in the statement that updates it, and then only for a row that statement updated
-- (`... WHERE saga_id IN (SELECT id FROM upd)` in orchestrator/src/store.rs). The reference to
-- `sagas` holds by construction, and sagas are never deleted. The foreign key re-checked it
-- with a trigger per event row (~8 per checkout): about a fifth of the orchestrator's Postgres
-- CPU in the benchmark's profile (docs/benchmarks.md).
ALTER TABLE saga_events DROP CONSTRAINT saga_events_saga_id_fkey;
