-- File results stored for delivery at login (PROTOCOL.md §10): SEND-FILE-PROXY-OK / -REJECTED
-- for the sender, SEND-FILE-PROXY-READY for the recipient. Kept until `expires_at`.
CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT NOT NULL,
    transfer_id TEXT NOT NULL,
    packet TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX notices_login ON notices (login, seq);
CREATE INDEX notices_expiry ON notices (expires_at);
