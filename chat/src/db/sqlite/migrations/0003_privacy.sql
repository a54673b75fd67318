-- Presence consent (PROTOCOL.md §7): who may see whose presence. state is 'requested',
-- 'approved' or 'denied' (a denied row stays so that the mutual-contacts shortcut cannot
-- undo a denial).
CREATE TABLE presence_subs (
    subject TEXT NOT NULL,
    watcher TEXT NOT NULL,
    state TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (subject, watcher)
);
CREATE INDEX presence_subs_watcher ON presence_subs (watcher);

-- Existing contacts: mutual pairs are approved both ways, one-sided ones become requests the
-- contact is asked about at their next login.
INSERT INTO presence_subs (subject, watcher, state, at)
SELECT c.contact_local, c.owner,
       CASE WHEN EXISTS (SELECT 1 FROM contacts r
                         WHERE r.owner = c.contact_local AND r.contact_local = c.owner)
            THEN 'approved' ELSE 'requested' END,
       0
FROM contacts c WHERE c.contact_local IS NOT NULL;

CREATE TABLE blocks (
    owner TEXT NOT NULL,
    blocked TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (owner, blocked)
);

-- Who sees this user's presence: 'everyone', 'contacts' (approved watchers) or 'nobody'.
ALTER TABLE users ADD COLUMN last_seen_visibility TEXT NOT NULL DEFAULT 'contacts';

-- Offer quotas (PROTOCOL.md §10.2): the sender's address, and when the offer was answered.
ALTER TABLE offers ADD COLUMN sender_addr TEXT;
ALTER TABLE offers ADD COLUMN answered_at INTEGER;
CREATE INDEX offers_sender ON offers (sender, state);
CREATE INDEX offers_sender_addr ON offers (sender_addr, state);
