-- Delivered transfers stop counting against their sender's quota: `delivered` is set once a
-- download has handed the file's last byte to the recipient. They still count against the
-- relay's capacity (and stay downloadable) until removed. The per-sender totals now count the
-- declared bytes of undelivered transfers only.
ALTER TABLE blobs ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;

DROP TRIGGER IF EXISTS blobs_totals_insert;
DROP TRIGGER IF EXISTS blobs_totals_delete;
DROP TRIGGER IF EXISTS blobs_totals_update;

CREATE TRIGGER blobs_totals_insert AFTER INSERT ON blobs BEGIN
    UPDATE totals SET total = total + NEW.size,
        partial = partial + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
        WHERE k = 0;
    INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
    UPDATE sender_totals SET total = total
        + (CASE WHEN NEW.delivered = 0 THEN NEW.size ELSE 0 END)
        WHERE sender = NEW.sender;
    DELETE FROM sender_totals WHERE sender = NEW.sender AND total <= 0;
END;
CREATE TRIGGER blobs_totals_delete AFTER DELETE ON blobs BEGIN
    UPDATE totals SET total = total - OLD.size,
        partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
        WHERE k = 0;
    UPDATE sender_totals SET total = total
        - (CASE WHEN OLD.delivered = 0 THEN OLD.size ELSE 0 END)
        WHERE sender = OLD.sender;
    DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
END;
-- Only when a counted column really changes (a download count or progress update costs no
-- totals work).
CREATE TRIGGER blobs_totals_update
AFTER UPDATE OF size, state, sender, delivered ON blobs
WHEN OLD.size IS NOT NEW.size OR OLD.state IS NOT NEW.state OR OLD.sender IS NOT NEW.sender
    OR OLD.delivered IS NOT NEW.delivered
BEGIN
    UPDATE totals SET total = total - OLD.size + NEW.size,
        partial = partial - (CASE WHEN OLD.state = 0 THEN OLD.size ELSE 0 END)
            + (CASE WHEN NEW.state = 0 THEN NEW.size ELSE 0 END)
        WHERE k = 0;
    UPDATE sender_totals SET total = total
        - (CASE WHEN OLD.delivered = 0 THEN OLD.size ELSE 0 END)
        WHERE sender = OLD.sender;
    DELETE FROM sender_totals WHERE sender = OLD.sender AND total <= 0;
    INSERT OR IGNORE INTO sender_totals (sender, total) VALUES (NEW.sender, 0);
    UPDATE sender_totals SET total = total
        + (CASE WHEN NEW.delivered = 0 THEN NEW.size ELSE 0 END)
        WHERE sender = NEW.sender;
    DELETE FROM sender_totals WHERE sender = NEW.sender AND total <= 0;
END;
