-- A transfer is delivered once its downloads have handed out every byte from the first one
-- on: `served` is the end of that prefix. A response counts only where it starts inside the
-- prefix, so a resumed download completes a delivery but a lone request for the last byte
-- (`Range: bytes=-1`) does not release the sender's quota.
ALTER TABLE blobs ADD COLUMN served INTEGER NOT NULL DEFAULT 0;
-- Transfers delivered before this column existed were served whole.
UPDATE blobs SET served = size WHERE delivered = 1;
