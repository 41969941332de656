-- Accounts, sessions, stores, cards, ledger, requests, idempotency keys and the events outbox.
-- Times are milliseconds since 1970 (UTC). Ids are random text, except the ledger's and
-- the events' which only grow.

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('customer', 'owner')),
    login         TEXT NOT NULL,
    login_key     TEXT NOT NULL UNIQUE,   -- the login folded for uniqueness (case, spaces)
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    token_hash  BLOB PRIMARY KEY,         -- SHA-256 of the bearer token; the token is never stored
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT, WITHOUT ROWID;
CREATE INDEX sessions_account ON sessions(account_id);

CREATE TABLE stores (
    id                  TEXT PRIMARY KEY,
    owner_id            TEXT NOT NULL REFERENCES accounts(id),
    name                TEXT NOT NULL,
    stamps_per_reward   INTEGER NOT NULL CHECK (stamps_per_reward BETWEEN 1 AND 100),
    reward_item         TEXT NOT NULL,
    address             TEXT,
    latitude            REAL,
    longitude           REAL,
    open_hours          TEXT,
    request_ttl_seconds INTEGER NOT NULL CHECK (request_ttl_seconds > 0),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
) STRICT;
CREATE INDEX stores_owner ON stores(owner_id);
CREATE INDEX stores_name ON stores(name COLLATE NOCASE);

CREATE TABLE menu_items (
    store_id TEXT NOT NULL REFERENCES stores(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name     TEXT NOT NULL,
    price    INTEGER NOT NULL CHECK (price >= 0),
    PRIMARY KEY (store_id, position)
) STRICT, WITHOUT ROWID;

CREATE TABLE cards (
    customer_id TEXT NOT NULL REFERENCES accounts(id),
    store_id    TEXT NOT NULL REFERENCES stores(id),
    stamps      INTEGER NOT NULL CHECK (stamps >= 0),
    rewards     INTEGER NOT NULL CHECK (rewards >= 0),
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (customer_id, store_id)
) STRICT, WITHOUT ROWID;

-- A card always equals the sum of its ledger rows.
CREATE TABLE ledger (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id   TEXT NOT NULL,
    store_id      TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('stamp_added', 'reward_earned', 'reward_used',
                                                'gift_sent', 'gift_received', 'manual_stamp')),
    stamps_delta  INTEGER NOT NULL,
    rewards_delta INTEGER NOT NULL,
    request_id    TEXT,
    at            INTEGER NOT NULL,
    FOREIGN KEY (customer_id, store_id) REFERENCES cards(customer_id, store_id)
) STRICT;
CREATE INDEX ledger_card ON ledger(customer_id, store_id, id);

CREATE TABLE requests (
    id          TEXT PRIMARY KEY,
    store_id    TEXT NOT NULL REFERENCES stores(id),
    customer_id TEXT NOT NULL REFERENCES accounts(id),
    kind        TEXT NOT NULL CHECK (kind IN ('stamp', 'reward')),
    count       INTEGER NOT NULL CHECK (count BETWEEN 1 AND 10),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled', 'expired')),
    reason      TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    decided_at  INTEGER
) STRICT;
CREATE INDEX requests_store ON requests(store_id, created_at DESC, id);
CREATE INDEX requests_customer ON requests(customer_id);
CREATE INDEX requests_pending_expiry ON requests(expires_at) WHERE status = 'pending';

-- The first answer to a create, replayed for a retry with the same key and body.
CREATE TABLE idempotency_keys (
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    key         TEXT NOT NULL,
    operation   TEXT NOT NULL,
    fingerprint BLOB NOT NULL,            -- SHA-256 of the operation and body
    status      INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_age ON idempotency_keys(created_at);

-- The outbox: one row per recipient, written in the transaction of the change it reports.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT NOT NULL
) STRICT;
CREATE INDEX events_recipient ON events(account_id, id);

-- The highest event id removed by retention; a cursor below it may have missed events.
CREATE TABLE event_retention (
    singleton      INTEGER PRIMARY KEY CHECK (singleton = 1),
    pruned_through INTEGER NOT NULL
) STRICT;
INSERT INTO event_retention (singleton, pruned_through) VALUES (1, 0);
