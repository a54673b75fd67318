-- Pending messages per recipient, kept by triggers on every change of `messages` (new
-- messages, acknowledgements, expiry, `db copy`): the batch reads a recipient's count with one
-- index lookup under the batch lock (db/retention.rs, refuse_full_in_tx) instead of counting up
-- to the pending cap of index entries per recipient of every batch, which let anyone with full
-- queues stall every node's writes. Only batch transactions (one at a time, under the batch
-- lock) change `pending` or add rows, so the counters' row locks are never contended.
CREATE TABLE pending_counts (
    recipient TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);

CREATE FUNCTION msim_count_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pending_counts (recipient, n)
        SELECT recipient, COUNT(*) FROM new_rows WHERE pending = 1
        GROUP BY recipient ORDER BY recipient
        ON CONFLICT (recipient) DO UPDATE SET n = pending_counts.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pending_counts (recipient, n)
        SELECT recipient, -COUNT(*) FROM old_rows WHERE pending = 1
        GROUP BY recipient ORDER BY recipient
        ON CONFLICT (recipient) DO UPDATE SET n = pending_counts.n + excluded.n;
    ELSE
        -- Updates that leave `pending` alone (bodies scrubbed) change no counter.
        INSERT INTO pending_counts (recipient, n)
        SELECT recipient, SUM(d) FROM (
            SELECT recipient, -1 AS d FROM old_rows WHERE pending = 1
            UNION ALL
            SELECT recipient, 1 AS d FROM new_rows WHERE pending = 1
        ) changes
        GROUP BY recipient HAVING SUM(d) <> 0 ORDER BY recipient
        ON CONFLICT (recipient) DO UPDATE SET n = pending_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER messages_pending_inserted AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msim_count_pending();
CREATE TRIGGER messages_pending_updated AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msim_count_pending();
CREATE TRIGGER messages_pending_deleted AFTER DELETE ON messages
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION msim_count_pending();

-- The messages already stored (the triggers exist now: no write slips between; creating them
-- locked out other writers until this migration commits).
INSERT INTO pending_counts (recipient, n)
SELECT recipient, COUNT(*) FROM messages WHERE pending = 1 GROUP BY recipient;
