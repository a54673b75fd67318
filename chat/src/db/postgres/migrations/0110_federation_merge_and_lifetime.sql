-- Federation (PROTOCOL.md §12.6, §12.9, chat/src/db/federation.rs): queued items that replace
-- the unsent one with the same key (a user's latest presence or profile for a watcher), and
-- the sweep of subscriptions past their lifetime. Idempotent, like the SQLite DDL.
ALTER TABLE fed_queue ADD COLUMN IF NOT EXISTS merge_key TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS fed_queue_merge ON fed_queue (peer, merge_key) WHERE merge_key <> '';
CREATE INDEX IF NOT EXISTS fed_subs_at ON fed_subs (at);
