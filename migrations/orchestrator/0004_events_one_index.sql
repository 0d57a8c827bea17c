-- Events are only ever read by saga (`WHERE saga_id = $1 ORDER BY seq`), so the primary key on
-- `seq` alone was a second index maintained on every event insert (~8 per checkout) for no
-- reader. The key becomes (saga_id, seq), which is the index those reads use.
ALTER TABLE saga_events DROP CONSTRAINT saga_events_pkey;
DROP INDEX saga_events_saga;
ALTER TABLE saga_events ADD PRIMARY KEY (saga_id, seq);
