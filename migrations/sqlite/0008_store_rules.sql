-- The rules a store sets for its counter: the counter code (a short code from a per-store secret
-- that changes every minute, proof that the person asking stands at the counter), and limits
-- that mean "per visit". Requests record whether they came with a valid code, and can be
-- reversed within minutes of their approval by a correcting ledger row.

ALTER TABLE stores ADD COLUMN counter_secret BLOB;     -- 32 random bytes; the codes are an HMAC of it
UPDATE stores SET counter_secret = randomblob(32);
ALTER TABLE stores ADD COLUMN require_counter_code INTEGER NOT NULL DEFAULT 0 CHECK (require_counter_code IN (0, 1));
ALTER TABLE stores ADD COLUMN auto_approve_at_counter INTEGER NOT NULL DEFAULT 0 CHECK (auto_approve_at_counter IN (0, 1));
ALTER TABLE stores ADD COLUMN pending_per_customer INTEGER NOT NULL DEFAULT 1 CHECK (pending_per_customer BETWEEN 0 AND 3);
ALTER TABLE stores ADD COLUMN stamp_cooldown_seconds INTEGER NOT NULL DEFAULT 300
    CHECK (stamp_cooldown_seconds BETWEEN 0 AND 86400);
ALTER TABLE stores ADD COLUMN daily_stamp_cap INTEGER NOT NULL DEFAULT 10 CHECK (daily_stamp_cap BETWEEN 0 AND 1000);

ALTER TABLE requests ADD COLUMN at_counter INTEGER NOT NULL DEFAULT 0 CHECK (at_counter IN (0, 1));
ALTER TABLE requests ADD COLUMN reversed_at INTEGER;
ALTER TABLE requests ADD COLUMN reversed_by TEXT;

-- Visits (approved requests and direct stamps) per card, and since when the card exists.
ALTER TABLE cards ADD COLUMN visits INTEGER NOT NULL DEFAULT 0;
UPDATE cards SET visits = (SELECT count(*) FROM requests r
                           WHERE r.customer_id = cards.customer_id AND r.store_id = cards.store_id AND r.status = 'approved');
UPDATE cards SET added_at = coalesce((SELECT min(l.at) FROM ledger l
                                      WHERE l.customer_id = cards.customer_id AND l.store_id = cards.store_id), updated_at)
WHERE added_at IS NULL;

-- Customers a store refuses requests from (at that store only).
CREATE TABLE store_blocks (
    store_id    TEXT NOT NULL REFERENCES stores(id),
    customer_id TEXT NOT NULL REFERENCES accounts(id),
    blocked_at  INTEGER NOT NULL,
    blocked_by  TEXT NOT NULL,
    PRIMARY KEY (store_id, customer_id)
) STRICT, WITHOUT ROWID;

-- The ledger gains the `reversal` kind: a correcting row that undoes one earlier row (`reverses`,
-- at most once). SQLite cannot change a CHECK in place, so the table is rebuilt; ledger rows are
-- referenced by nothing, and their ids are kept.
CREATE TABLE ledger_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id   TEXT NOT NULL,
    store_id      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('stamp_added', 'reward_earned', 'reward_used',
                                                'gift_sent', 'gift_received', 'manual_stamp', 'reversal')),
    stamps_delta  INTEGER NOT NULL,
    rewards_delta INTEGER NOT NULL,
    request_id    TEXT,
    at            INTEGER NOT NULL,
    member_id     TEXT,
    reverses      INTEGER,
    FOREIGN KEY (customer_id, store_id) REFERENCES cards(customer_id, store_id)
) STRICT;
INSERT INTO ledger_new (id, customer_id, store_id, kind, stamps_delta, rewards_delta, request_id, at, member_id)
    SELECT id, customer_id, store_id, kind, stamps_delta, rewards_delta, request_id, at, member_id FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE INDEX ledger_card ON ledger(customer_id, store_id, id);
CREATE INDEX ledger_store_time ON ledger(store_id, at);
CREATE UNIQUE INDEX ledger_reverses ON ledger(reverses) WHERE reverses IS NOT NULL;
