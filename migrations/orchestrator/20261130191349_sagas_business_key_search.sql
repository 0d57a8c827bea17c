-- The console searches sagas by business key alone (any definition): `sagas_business_key` is
-- keyed (definition, business_key), so it cannot answer that; this one can, newest first.
CREATE INDEX sagas_business_key_search ON sagas (business_key, id) WHERE business_key IS NOT NULL;
