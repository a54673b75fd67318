-- What the cluster's readers need (chat/src/cluster/fanout.rs): which node committed each stored
-- item, so a node skips what it already pushed to its own sessions. The value comes from the
-- transaction-local setting `msim.node` that every batch transaction sets first
-- (db/postgres/mod.rs, lock_batch); rows written elsewhere (`db copy`) get 0, no node.
ALTER TABLE messages ADD COLUMN origin BIGINT NOT NULL
    DEFAULT COALESCE(NULLIF(current_setting('msim.node', true), '')::bigint, 0);
ALTER TABLE receipts ADD COLUMN origin BIGINT NOT NULL
    DEFAULT COALESCE(NULLIF(current_setting('msim.node', true), '')::bigint, 0);
ALTER TABLE offers ADD COLUMN origin BIGINT NOT NULL
    DEFAULT COALESCE(NULLIF(current_setting('msim.node', true), '')::bigint, 0);
ALTER TABLE notices ADD COLUMN origin BIGINT NOT NULL
    DEFAULT COALESCE(NULLIF(current_setting('msim.node', true), '')::bigint, 0);

-- A receipt delivered live is marked, not deleted: other nodes' readers may not have read it
-- yet. The leader deletes marked receipts once every node's reader has passed them, and clears
-- the bodies of acknowledged messages the same way (cluster::scrub).
ALTER TABLE receipts ADD COLUMN delivered SMALLINT NOT NULL DEFAULT 0;
CREATE INDEX receipts_delivered ON receipts (seq) WHERE delivered = 1;
CREATE INDEX messages_unscrubbed ON messages (seq) WHERE pending = 0 AND body <> '';
