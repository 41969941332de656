-- migrations/sqlite/0008_store_rules.sql for PostgreSQL: the counter code and the per-visit
-- rules of a store, requests at the counter and their reversal, visits per card, blocked
-- customers, and the ledger's `reversal` rows.
ALTER TABLE stores ADD COLUMN counter_secret bytea;
-- gen_random_uuid draws from the server's strong random source.
UPDATE stores SET counter_secret = sha256((gen_random_uuid()::text || gen_random_uuid()::text)::bytea);
ALTER TABLE stores ADD COLUMN require_counter_code bigint NOT NULL DEFAULT 0 CHECK (require_counter_code IN (0, 1));
ALTER TABLE stores ADD COLUMN auto_approve_at_counter bigint NOT NULL DEFAULT 0 CHECK (auto_approve_at_counter IN (0, 1));
ALTER TABLE stores ADD COLUMN pending_per_customer bigint NOT NULL DEFAULT 1 CHECK (pending_per_customer BETWEEN 0 AND 3);
ALTER TABLE stores ADD COLUMN stamp_cooldown_seconds bigint NOT NULL DEFAULT 300
    CHECK (stamp_cooldown_seconds BETWEEN 0 AND 86400);
ALTER TABLE stores ADD COLUMN daily_stamp_cap bigint NOT NULL DEFAULT 10 CHECK (daily_stamp_cap BETWEEN 0 AND 1000);

ALTER TABLE requests ADD COLUMN at_counter bigint NOT NULL DEFAULT 0 CHECK (at_counter IN (0, 1));
ALTER TABLE requests ADD COLUMN reversed_at bigint;
ALTER TABLE requests ADD COLUMN reversed_by text;

ALTER TABLE cards ADD COLUMN visits bigint NOT NULL DEFAULT 0;
UPDATE cards SET visits = (SELECT count(*) FROM requests r
                           WHERE r.customer_id = cards.customer_id AND r.store_id = cards.store_id AND r.status = 'approved');
UPDATE cards SET added_at = coalesce((SELECT min(l.at) FROM ledger l
                                      WHERE l.customer_id = cards.customer_id AND l.store_id = cards.store_id), updated_at)
WHERE added_at IS NULL;

CREATE TABLE store_blocks (
    store_id    text NOT NULL REFERENCES stores(id),
    customer_id text NOT NULL REFERENCES accounts(id),
    blocked_at  bigint NOT NULL,
    blocked_by  text NOT NULL,
    PRIMARY KEY (store_id, customer_id)
);

ALTER TABLE ledger DROP CONSTRAINT ledger_kind_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_check CHECK (kind IN ('stamp_added', 'reward_earned', 'reward_used',
                                                                    'gift_sent', 'gift_received', 'manual_stamp', 'reversal'));
ALTER TABLE ledger ADD COLUMN reverses bigint;
CREATE UNIQUE INDEX ledger_reverses ON ledger (reverses) WHERE reverses IS NOT NULL;
