-- Retention (PROTOCOL.md §5.6): the job finds pending messages past their time to live and
-- delivered ones past their receipt retention by age.
CREATE INDEX messages_age ON messages (pending, at);
CREATE INDEX receipts_age ON receipts (at);
