-- Walk-in customers registered by a store with only a phone number, the one-time codes that let
-- a person claim such an account, and stamp gifts between customers.

ALTER TABLE accounts ADD COLUMN walk_in INTEGER NOT NULL DEFAULT 0 CHECK (walk_in IN (0, 1));

CREATE TABLE claim_codes (
    account_id TEXT PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
    code_hash  BLOB NOT NULL,             -- SHA-256 of the account id and the code
    expires_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

CREATE TABLE gifts (
    id         TEXT PRIMARY KEY,
    store_id   TEXT NOT NULL REFERENCES stores(id),
    from_id    TEXT NOT NULL REFERENCES accounts(id),
    to_id      TEXT NOT NULL REFERENCES accounts(id),
    count      INTEGER NOT NULL CHECK (count > 0),
    at         INTEGER NOT NULL
) STRICT;
CREATE INDEX gifts_sender ON gifts(from_id, at);
