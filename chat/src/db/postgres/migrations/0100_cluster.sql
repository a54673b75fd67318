-- Cluster state shared by the msim-chat nodes of one domain on PostgreSQL (chat/src/cluster).
-- Numbered 0100 to leave the store's own migrations their numbers. Idempotent: the cluster
-- applies the same SQL itself at start-up (cluster::ensure_schema).

-- One row per running node; a node whose heartbeat is older than the node timeout is dead.
CREATE TABLE IF NOT EXISTS cluster_nodes (
    node BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Which node has at least one session of which user: a user is online while any row exists.
CREATE TABLE IF NOT EXISTS cluster_presence (
    login TEXT NOT NULL,
    node BIGINT NOT NULL REFERENCES cluster_nodes (node) ON DELETE CASCADE,
    PRIMARY KEY (login, node)
);
CREATE INDEX IF NOT EXISTS cluster_presence_by_node ON cluster_presence (node);

-- Live-only packets too large for a NOTIFY payload; the NOTIFY names the row. Kept briefly.
CREATE TABLE IF NOT EXISTS cluster_events (
    id BIGSERIAL PRIMARY KEY,
    origin BIGINT NOT NULL,
    login TEXT NOT NULL,
    packet BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Failed-login counters (throttle.rs semantics) shared by every node. scope: 0 = login and
-- address, 1 = address, 2 = login (strangers only).
CREATE TABLE IF NOT EXISTS cluster_login_failures (
    scope SMALLINT NOT NULL,
    key TEXT NOT NULL,
    failures INT NOT NULL,
    last_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

-- Addresses a login has logged in from (they are not slowed by strangers' failures).
CREATE TABLE IF NOT EXISTS cluster_known_addresses (
    login TEXT NOT NULL,
    addr TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    PRIMARY KEY (login, addr)
);

-- Token buckets (rate.rs semantics) shared by every node: level = tokens left.
-- expires_us (all three tables): past it the row means nothing any more; the leader prunes it.
CREATE TABLE IF NOT EXISTS cluster_buckets (
    scope SMALLINT NOT NULL,
    key TEXT NOT NULL,
    level DOUBLE PRECISION NOT NULL,
    at_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
