-- Walk-in customers registered by a store with only a phone number, the one-time codes that let
-- a person claim such an account, and stamp gifts between customers.

-- Phone-number logins become unique by their digits ('+82 10-5555-0101' is 'tel:+821055550101'),
-- as the server now folds them. A key that would collide with another keeps its old form.
UPDATE OR IGNORE accounts
SET login_key = 'tel:' || (CASE WHEN trim(login) LIKE '+%' THEN '+' ELSE '' END)
    || replace(replace(replace(replace(replace(replace(trim(login), ' ', ''), '-', ''), '(', ''), ')', ''), '.', ''), '+', '')
WHERE trim(login) NOT GLOB '*[^0-9 ().+-]*'
  AND length(replace(replace(replace(replace(replace(replace(trim(login), ' ', ''), '-', ''), '(', ''), ')', ''), '.', ''), '+', ''))
      BETWEEN 6 AND 20;

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
