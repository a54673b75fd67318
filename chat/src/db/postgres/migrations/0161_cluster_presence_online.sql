-- A presence record's `online` follows its login's cluster_presence rows (review LOW 4).
-- Idempotent: the cluster applies the same SQL itself at start-up (cluster::ensure_schema).
--
-- Until now only set_presence and remove_nodes set `online`. A node of an older version
-- (a rolling upgrade) that removed a login's last row left `online = true` on a login without
-- rows, and pruning (offline records only) never removed that record. Now the trigger sets
-- `online` from the rows every time it fires. A flip it makes is nobody's change (node and
-- change 0, as for a record it creates): a change of this version that made the transition
-- then records itself, in the same transaction.

-- The function's replacement locks no table; the repair below holds writes to cluster_presence
-- for its one statement.
SET LOCAL lock_timeout = '10s';

CREATE OR REPLACE FUNCTION cluster_presence_touch() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    l TEXT := CASE WHEN TG_OP = 'DELETE' THEN OLD.login ELSE NEW.login END;
BEGIN
    INSERT INTO cluster_presence_last AS r (login, online, node, change, xid)
    VALUES (l, EXISTS (SELECT 1 FROM cluster_presence p WHERE p.login = l), 0, 0,
            pg_current_xact_id())
    ON CONFLICT (login) DO UPDATE SET xid = EXCLUDED.xid, at = clock_timestamp(),
        online = EXCLUDED.online,
        node = CASE WHEN r.online = EXCLUDED.online THEN r.node ELSE 0 END,
        change = CASE WHEN r.online = EXCLUDED.online THEN r.change ELSE 0 END;
    RETURN NULL;
END
$$;

-- Records such a node already left behind: offline now (pruned once old enough), and read
-- again by every node (the xid moves). The table lock keeps a presence write from committing
-- between this statement's snapshot and its row locks (its row would be unseen by NOT EXISTS).
LOCK TABLE cluster_presence IN SHARE MODE;
UPDATE cluster_presence_last r SET online = false, node = 0, change = 0,
    xid = pg_current_xact_id(), at = clock_timestamp()
WHERE online AND NOT EXISTS (SELECT 1 FROM cluster_presence p WHERE p.login = r.login);
