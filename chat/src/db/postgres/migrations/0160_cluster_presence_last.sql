-- Each login's last presence change (chat/src/cluster/nodes.rs). Idempotent: the cluster
-- applies the same SQL itself at start-up (cluster::ensure_schema). Needs PostgreSQL 13 (xid8).
--
-- online, node, change: the login's last transition (its first session anywhere, or its last
-- one gone), the node that made it and that change's random id. A node whose change got no
-- answer (it may have committed) learns at its repair whether that change made the latest
-- transition, which then nobody announced: the repair announces it, and nothing else, so a
-- transition is announced once even when another node's change came meanwhile.
-- xid: the transaction that last changed any of the login's cluster_presence rows. Every
-- node reads only the logins changed since its previous read (the rows whose xid was not
-- visible in that read's snapshot: none is missed, whatever the commit order).

-- xid8 and pg_visible_in_snapshot came in PostgreSQL 13: say so, rather than "type xid8 does
-- not exist" (docs/OPERATING.md, Requirements).
DO $$
BEGIN
    IF current_setting('server_version_num')::int < 130000 THEN
        RAISE EXCEPTION 'mSIM needs PostgreSQL 13 or later; this server is PostgreSQL %',
            current_setting('server_version');
    END IF;
END
$$;
-- CREATE TRIGGER locks cluster_presence (SHARE ROW EXCLUSIVE): on a live cluster, give up
-- rather than queue every node's presence writes behind a stuck transaction.
SET LOCAL lock_timeout = '10s';

CREATE TABLE IF NOT EXISTS cluster_presence_last (
    login TEXT PRIMARY KEY,
    online BOOLEAN NOT NULL,
    node BIGINT NOT NULL,
    change BIGINT NOT NULL,
    xid xid8 NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS cluster_presence_last_xid ON cluster_presence_last (xid);
CREATE INDEX IF NOT EXISTS cluster_presence_last_at ON cluster_presence_last (at) WHERE NOT online;

-- Every insert or delete of a cluster_presence row moves its login's xid, whoever writes it
-- (a cascade from cluster_nodes too): the readers' "changed since" misses nothing. A login
-- without a record gets one here (online: whether it has rows; of no node's change: id 0).
CREATE OR REPLACE FUNCTION cluster_presence_touch() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    l TEXT := CASE WHEN TG_OP = 'DELETE' THEN OLD.login ELSE NEW.login END;
BEGIN
    INSERT INTO cluster_presence_last (login, online, node, change, xid)
    VALUES (l, EXISTS (SELECT 1 FROM cluster_presence p WHERE p.login = l), 0, 0,
            pg_current_xact_id())
    ON CONFLICT (login) DO UPDATE SET xid = EXCLUDED.xid, at = clock_timestamp();
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'cluster_presence_touch'
                   AND tgrelid = 'cluster_presence'::regclass) THEN
        CREATE TRIGGER cluster_presence_touch AFTER INSERT OR DELETE ON cluster_presence
        FOR EACH ROW EXECUTE FUNCTION cluster_presence_touch();
    END IF;
END
$$;
