-- The fingerprint of the password key (secret.key) the database was set up with: a node or a
-- restored data directory with another key is refused at start-up, even before any password
-- is stored (two fresh nodes on one database would otherwise each make their own key).
CREATE TABLE key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL
);
