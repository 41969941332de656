-- The wrong-password count and lock of one (client address, login) pair, kept in the database
-- so that every instance on it and every restart honour one lock. `pair` is a digest of the
-- address and the login's key, not the two themselves. Rows quiet for longer than the longest
-- lock are pruned (a lock stops doubling after that much quiet anyway).
CREATE TABLE login_locks (
    pair         bytea PRIMARY KEY,
    failures     bigint NOT NULL,
    window_start bigint NOT NULL,
    locks        bigint NOT NULL,
    locked_until bigint,
    updated_at   bigint NOT NULL
);
CREATE INDEX login_locks_age ON login_locks (updated_at);
