-- A saga row is rewritten by every transition. Leave room on each page so that those updates
-- can be HOT (no new index entries while no indexed column changes: the driver keeps
-- next_run_at as is while a saga stays due), and keep rows up to a page inline and
-- uncompressed (the JSON state is a few KB: compressing it on every write cost CPU and saved
-- nothing worth having).
ALTER TABLE sagas SET (fillfactor = 70, toast_tuple_target = 8160);
