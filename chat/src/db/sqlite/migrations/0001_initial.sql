-- mSIM chat schema. Portable SQL (SQLite today, PostgreSQL later): timestamps are INTEGER
-- microseconds since the Unix epoch, booleans INTEGER 0/1.
CREATE TABLE users (
    login TEXT PRIMARY KEY,
    password BLOB NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    last_seen INTEGER,
    created_at INTEGER NOT NULL
);

CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 1,
    read_at INTEGER
);
CREATE INDEX messages_pending ON messages (recipient, pending, seq);

CREATE TABLE receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    reader TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX receipts_sender ON receipts (sender, seq);

CREATE TABLE contacts (
    owner TEXT NOT NULL,
    contact TEXT NOT NULL,
    contact_local TEXT,
    name TEXT,
    grp TEXT,
    PRIMARY KEY (owner, contact)
);
CREATE INDEX contacts_local ON contacts (contact_local);

CREATE TABLE offers (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    mime TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    relay TEXT
);
CREATE INDEX offers_recipient ON offers (recipient, state);
CREATE INDEX offers_expiry ON offers (state, expires_at);
