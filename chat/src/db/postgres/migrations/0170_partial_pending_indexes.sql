-- The indexes that find messages by `pending` hold only the rows they are asked about, so an
-- acknowledgement (pending 1 -> 0, a new row version: not a HOT update) adds an entry to one
-- of them instead of to both, and a new message's entries go into indexes of the waiting rows
-- only (small, so their pages stay in memory) instead of indexes of every kept row. Every
-- query that uses them names `pending = 1` or `pending = 0` literally (catch-up, pending
-- counts, expiry, forgetting delivered messages, the scrub), which the planner matches
-- against the predicates, so nodes of the previous version keep their plans.
--
-- The table's strongest lock first: taking a weaker one for CREATE INDEX and upgrading it for
-- DROP INDEX could deadlock with a running node's batch that already read `messages`.
LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;

-- Catch-up after login and the pending counts (`recipient = $1 AND pending = 1 … ORDER BY seq`).
CREATE INDEX messages_waiting ON messages (recipient, seq) WHERE pending = 1;
-- Expiry of messages never delivered (`pending = 1 AND at < $1 ORDER BY at`).
CREATE INDEX messages_waiting_age ON messages (at) WHERE pending = 1;
-- Forgetting delivered messages and the leader's scrub (`pending = 0 AND at < $1`).
CREATE INDEX messages_delivered_age ON messages (at) WHERE pending = 0;

DROP INDEX messages_pending;
DROP INDEX messages_age;
