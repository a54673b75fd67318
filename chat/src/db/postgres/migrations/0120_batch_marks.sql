-- Proof of a batch's commit (db/postgres/mod.rs: lock_batch_marked, commit_status). Each
-- writer (one per node process, a random id) stores the number of its current batch in its
-- own row, inside the batch transaction. When a COMMIT's answer is lost, the row tells whether
-- the batch committed, whatever happened to the server meanwhile (a crash or a failover makes
-- transaction ids unreliable: ones never made durable are handed out again). Rows of writers
-- gone for a day are removed when a node starts.
CREATE TABLE IF NOT EXISTS batch_marks (
    writer BIGINT PRIMARY KEY,
    mark BIGINT NOT NULL,
    touched_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
