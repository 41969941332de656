-- migrations/sqlite/0007_store_members.sql for PostgreSQL: a store's members (its owner and
-- staff), the invitations staff join with, and who decided, stamped and added what.
CREATE TABLE store_members (
    store_id       text NOT NULL REFERENCES stores(id),
    account_id     text NOT NULL REFERENCES accounts(id),
    role           text NOT NULL CHECK (role IN ('owner', 'staff')),
    added_at       bigint NOT NULL,
    last_active_at bigint,
    PRIMARY KEY (store_id, account_id)
);
CREATE INDEX store_members_account ON store_members (account_id);
INSERT INTO store_members (store_id, account_id, role, added_at) SELECT id, owner_id, 'owner', created_at FROM stores;

CREATE TABLE store_invitations (
    code_hash  bytea PRIMARY KEY,
    store_id   text NOT NULL REFERENCES stores(id),
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX store_invitations_store ON store_invitations (store_id);
CREATE INDEX store_invitations_expiry ON store_invitations (expires_at);

ALTER TABLE requests ADD COLUMN decided_by text;
ALTER TABLE ledger ADD COLUMN member_id text;
ALTER TABLE cards ADD COLUMN added_by text;
ALTER TABLE cards ADD COLUMN added_at bigint;
CREATE INDEX requests_decided ON requests (store_id, decided_at) WHERE decided_at IS NOT NULL;
CREATE INDEX ledger_store_time ON ledger (store_id, at);
