-- The index as msim-storage created it before it used migrations. Every statement tolerates an
-- existing object, so a data dir made by older code (with or without the totals tables) opens
-- unchanged and is then recorded as at this version.

-- One row per blob: `state` 0 = partial upload, 1 = complete; times in unix seconds.
CREATE TABLE IF NOT EXISTS blobs (
    id TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    sender TEXT NOT NULL,
    sha256 TEXT,
    state INTEGER NOT NULL DEFAULT 0,
    downloads INTEGER NOT NULL DEFAULT 0,
    last_progress INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_expires ON blobs(expires);
CREATE INDEX IF NOT EXISTS blobs_partial ON blobs(state, last_progress);
CREATE INDEX IF NOT EXISTS blobs_sender ON blobs(sender);

-- Removed transfers: `reason` is a `GoneReason` code, `removed` unix seconds.
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY NOT NULL,
    reason INTEGER NOT NULL,
    removed INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_removed ON tombstones(removed);

-- Declared bytes in all, of partial uploads, and per sender, kept in step with `blobs` by the
-- triggers below: admission checks read two rows instead of summing the table.
CREATE TABLE IF NOT EXISTS totals (
    k INTEGER PRIMARY KEY NOT NULL CHECK (k = 0),
    total INTEGER NOT NULL,
    partial INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sender_totals (
    sender TEXT PRIMARY KEY NOT NULL,
    total INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS blobs_totals_insert AFTER INSERT ON blobs BEGIN
    UPDATE totals SET total = total + NEW.size,
        partial = partial + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
        WHERE k = 0;
    INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
    UPDATE sender_totals SET total = total + NEW.size WHERE sender = NEW.sender;
END;
CREATE TRIGGER IF NOT EXISTS blobs_totals_delete AFTER DELETE ON blobs BEGIN
    UPDATE totals SET total = total - OLD.size,
        partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
        WHERE k = 0;
    UPDATE sender_totals SET total = total - OLD.size WHERE sender = OLD.sender;
    DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
END;
CREATE TRIGGER IF NOT EXISTS blobs_totals_update
AFTER UPDATE OF size, state, sender ON blobs BEGIN
    UPDATE totals SET total = total - OLD.size + NEW.size,
        partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
            + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
        WHERE k = 0;
    UPDATE sender_totals SET total = total - OLD.size WHERE sender = OLD.sender;
    DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
    INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
    UPDATE sender_totals SET total = total + NEW.size WHERE sender = NEW.sender;
END;

-- Fill the totals from `blobs` when they are new (an index from before them).
DELETE FROM sender_totals WHERE NOT EXISTS (SELECT 1 FROM totals);
INSERT INTO sender_totals (sender, total)
    SELECT sender, SUM(size) FROM blobs WHERE NOT EXISTS (SELECT 1 FROM totals) GROUP BY sender;
INSERT INTO totals (k, total, partial)
    SELECT 0,
        (SELECT COALESCE(SUM(size), 0) FROM blobs),
        (SELECT COALESCE(SUM(CASE WHEN state = 0 THEN size ELSE 0 END), 0) FROM blobs)
    WHERE NOT EXISTS (SELECT 1 FROM totals);
