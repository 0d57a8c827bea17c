-- The console filters sagas by definition, newest first. Without an index on it, a definition
-- that few sagas use meant a sequential scan of every saga (with 100,000 stored: 180-260 ms on
-- the development machine, `tandem saga bench-console`); with it, a backward index scan that
-- stops after one page. The definition never changes, so it costs an entry only when a row
-- version leaves the heap-only chain (a status or due-time change already does).
CREATE INDEX sagas_definition_id ON sagas (definition, id);
