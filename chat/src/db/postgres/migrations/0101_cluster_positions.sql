-- How far each node's reader has pushed the stored streams (cluster::fanout): what every live
-- node has passed may be scrubbed (bodies of acknowledged messages, delivered receipts). NULL
-- until the node's reader has started: nothing is scrubbed meanwhile. Idempotent, like 0100.
ALTER TABLE cluster_nodes ADD COLUMN IF NOT EXISTS fed_messages BIGINT;
ALTER TABLE cluster_nodes ADD COLUMN IF NOT EXISTS fed_receipts BIGINT;
