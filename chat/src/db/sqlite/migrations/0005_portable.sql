-- The store boundary (chat/src/db/mod.rs): no rowid, and file results kept as data.
-- Offers get an explicit sequence column (their rowid so far, so existing order is kept).
CREATE TABLE offers_new (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    mime TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    relay TEXT,
    sender_addr TEXT,
    answered_at INTEGER
);
INSERT INTO offers_new (seq, id, sender, recipient, filename, size, sha256, mime, created_at,
                        expires_at, state, relay, sender_addr, answered_at)
SELECT rowid, id, sender, recipient, filename, size, sha256, mime, created_at, expires_at,
       state, relay, sender_addr, answered_at FROM offers;
DROP TABLE offers;
ALTER TABLE offers_new RENAME TO offers;
CREATE INDEX offers_recipient ON offers (recipient, state);
CREATE INDEX offers_expiry ON offers (state, expires_at);
CREATE INDEX offers_sender ON offers (sender, state);
CREATE INDEX offers_sender_addr ON offers (sender_addr, state);

-- Notices: one column per field instead of an encoded wire line. Existing rows keep their line
-- in legacy_packet (kind 'legacy') until msim-chat converts them when it opens the database
-- (chat/src/db/sqlite/legacy.rs), which empties legacy_packet.
CREATE TABLE notices_new (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT,
    peer TEXT,
    filename TEXT,
    size INTEGER,
    relay_host TEXT,
    relay_port INTEGER,
    url TEXT,
    token TEXT,
    token_expires INTEGER,
    sha256 TEXT,
    mime TEXT,
    legacy_packet TEXT
);
INSERT INTO notices_new (seq, login, transfer_id, expires_at, kind, legacy_packet)
SELECT seq, login, transfer_id, expires_at, 'legacy', packet FROM notices;
DROP TABLE notices;
ALTER TABLE notices_new RENAME TO notices;
CREATE INDEX notices_login ON notices (login, seq);
CREATE INDEX notices_expiry ON notices (expires_at);
