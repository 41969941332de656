-- Walk-ins become cards a store holds for a phone number, not accounts that own the number: the
-- holder row's key names the store ('held:<store id>:tel:+49…'), so no store can reserve a phone
-- number, and nobody signs in to it. A person who signs up or signs in with that phone number
-- claims one store's held card with the code that store gave them, bound to (store, phone).
UPDATE accounts
SET login_key = 'held:' || (SELECT c.store_id FROM cards c WHERE c.customer_id = accounts.id
                            ORDER BY c.updated_at LIMIT 1) || ':' || login_key
WHERE walk_in = 1 AND EXISTS (SELECT 1 FROM cards c WHERE c.customer_id = accounts.id);

-- Codes were per account; now per (store, phone). Codes issued before this are void.
DROP TABLE claim_codes;
CREATE TABLE claim_codes (
    store_id   TEXT NOT NULL REFERENCES stores(id),
    phone_key  TEXT NOT NULL,             -- 'tel:+491701234567'
    code_hash  BLOB NOT NULL,             -- SHA-256 of the store, the phone key and the code
    expires_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (store_id, phone_key)
) STRICT, WITHOUT ROWID;
CREATE INDEX claim_codes_phone ON claim_codes(phone_key);
CREATE INDEX claim_codes_expiry ON claim_codes(expires_at);

-- A code a customer's own phone shows, for a store to find them when they have no card there yet.
CREATE TABLE member_codes (
    code_hash  BLOB PRIMARY KEY,          -- SHA-256 of the code
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX member_codes_account ON member_codes(account_id);
CREATE INDEX member_codes_expiry ON member_codes(expires_at);

-- One row per counted action of a party (a scope such as 'walk-in:<store>'), for limits that
-- hold across restarts and, later, across instances. Rows older than a day are pruned.
CREATE TABLE rate_events (
    scope TEXT NOT NULL,
    at    INTEGER NOT NULL
) STRICT;
CREATE INDEX rate_events_scope ON rate_events(scope, at);
CREATE INDEX rate_events_age ON rate_events(at);

-- The queries that used to scan: a store's pending list, a store's cards, a customer's pending
-- requests at one store (for the request limits).
CREATE INDEX cards_store ON cards(store_id, customer_id);
-- One partial index for both: a store's pending list (few rows, sorted after the search) and one
-- customer's pending requests at a store. It holds only pending rows: a decision drops the entry.
CREATE INDEX requests_pending ON requests(store_id, customer_id) WHERE status = 'pending';
CREATE INDEX sessions_expiry ON sessions(expires_at);
CREATE INDEX sessions_revoked ON sessions(revoked_at) WHERE revoked_at IS NOT NULL;

-- Requests per customer and store in each clock hour (hour = created_at / 3,600,000): the hourly
-- limit reads one row, however many requests there were. Rows of past hours are pruned.
CREATE TABLE request_counts (
    customer_id TEXT NOT NULL,
    store_id    TEXT NOT NULL,
    hour        INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (customer_id, store_id, hour)
) STRICT, WITHOUT ROWID;
CREATE INDEX request_counts_hour ON request_counts(hour);
