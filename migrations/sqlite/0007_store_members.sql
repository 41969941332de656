-- A store is run by its members: its owner and the staff who joined with an invitation the owner
-- made. Every member's devices get the store's events; each decision, stamp and walk-in records
-- the member who made it. The owner of every existing store becomes its first member.
CREATE TABLE store_members (
    store_id       TEXT NOT NULL REFERENCES stores(id),
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    role           TEXT NOT NULL CHECK (role IN ('owner', 'staff')),
    added_at       INTEGER NOT NULL,
    last_active_at INTEGER,               -- the member's last decision, stamp or walk-in here
    PRIMARY KEY (store_id, account_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX store_members_account ON store_members(account_id);
INSERT INTO store_members (store_id, account_id, role, added_at) SELECT id, owner_id, 'owner', created_at FROM stores;

-- Single-use codes an owner gives a barista to join the store with their own account.
CREATE TABLE store_invitations (
    code_hash  BLOB PRIMARY KEY,          -- SHA-256 of the code
    store_id   TEXT NOT NULL REFERENCES stores(id),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX store_invitations_store ON store_invitations(store_id);
CREATE INDEX store_invitations_expiry ON store_invitations(expires_at);

-- Who did it: the member who decided a request, who made a ledger row (none for a customer's
-- gift), who added a card (a walk-in or a member code) and when.
ALTER TABLE requests ADD COLUMN decided_by TEXT;
ALTER TABLE ledger ADD COLUMN member_id TEXT;
ALTER TABLE cards ADD COLUMN added_by TEXT;
ALTER TABLE cards ADD COLUMN added_at INTEGER;
-- A store's decisions and ledger rows of one day, for the per-member counts.
CREATE INDEX requests_decided ON requests(store_id, decided_at) WHERE decided_at IS NOT NULL;
CREATE INDEX ledger_store_time ON ledger(store_id, at);
