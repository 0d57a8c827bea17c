-- 2PC: an effect made by a prepared transaction names its transaction (NULL for a saga call), so
-- the audit endpoint shows committed 2PC effects with their transaction id. For such rows
-- saga_id holds the transaction id and step the step index (the participant's branch).
ALTER TABLE shipments ADD COLUMN txn_id uuid;
