-- Rows of the shared login throttle per scope, kept by triggers in 16 shards (spread over
-- hashtext(key) so concurrent inserts rarely wait on one counter row): a node reads the sum
-- to tell whether a scope is full (cluster/throttle.rs caps each scope and counts a new key
-- on a coarser shared key instead). Idempotent: cluster::ensure_schema applies it too.
CREATE TABLE IF NOT EXISTS cluster_throttle_rows (
    scope SMALLINT NOT NULL,
    shard SMALLINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (scope, shard)
);

CREATE OR REPLACE FUNCTION cluster_throttle_row_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cluster_throttle_rows (scope, shard, n)
    VALUES (NEW.scope, (hashtext(NEW.key) & 15)::smallint, 1)
    ON CONFLICT (scope, shard) DO UPDATE SET n = cluster_throttle_rows.n + 1;
    RETURN NULL;
END $$;

-- Per statement: the prune job deletes thousands of rows at once.
CREATE OR REPLACE FUNCTION cluster_throttle_rows_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cluster_throttle_rows c SET n = c.n - d.n
    FROM (SELECT scope, (hashtext(key) & 15)::smallint AS shard, count(*) AS n
          FROM removed GROUP BY 1, 2) d
    WHERE c.scope = d.scope AND c.shard = d.shard;
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'cluster_throttle_row_added') THEN
        LOCK TABLE cluster_login_failures IN SHARE ROW EXCLUSIVE MODE;
        CREATE TRIGGER cluster_throttle_row_added AFTER INSERT ON cluster_login_failures
            FOR EACH ROW EXECUTE FUNCTION cluster_throttle_row_added();
        CREATE TRIGGER cluster_throttle_rows_removed AFTER DELETE ON cluster_login_failures
            REFERENCING OLD TABLE AS removed
            FOR EACH STATEMENT EXECUTE FUNCTION cluster_throttle_rows_removed();
        -- The rows already there, counted under the same lock as the triggers' creation.
        DELETE FROM cluster_throttle_rows;
        INSERT INTO cluster_throttle_rows (scope, shard, n)
        SELECT scope, (hashtext(key) & 15)::smallint, count(*)
        FROM cluster_login_failures GROUP BY 1, 2;
    END IF;
END $$;
