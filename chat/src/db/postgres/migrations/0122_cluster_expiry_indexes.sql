-- The leader's prune job deletes expired rows of the shared throttle tables every few seconds:
-- with these indexes it finds them without reading the whole tables (which an attacker with
-- many accounts and addresses can grow), and it deletes a bounded number per run.
CREATE INDEX IF NOT EXISTS cluster_login_failures_expiry ON cluster_login_failures (expires_us);
CREATE INDEX IF NOT EXISTS cluster_known_addresses_expiry ON cluster_known_addresses (expires_us);
CREATE INDEX IF NOT EXISTS cluster_buckets_expiry ON cluster_buckets (expires_us);
CREATE INDEX IF NOT EXISTS cluster_events_created ON cluster_events (created_at);
