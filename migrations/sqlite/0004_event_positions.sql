-- Events get a position in their recipient's stream (seq), and a poll's cursor is a position in
-- the caller's own stream. The numbers are the engine's to choose as long as one account's
-- positions commit in increasing order: here one writer commits at a time, and a new event takes
-- the account's newest position + 1. (PostgreSQL, with concurrent writers, takes them from a
-- sequence under a per-account lock held until commit.) The global id stays, for retention to
-- prune by age.
--
-- Positions continue the old ids, so a cursor a client holds stays valid: an event an account
-- had is at the same number, later ones are higher.
CREATE TABLE events_new (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,          -- the position in the recipient's stream
    type       TEXT NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT NOT NULL,
    UNIQUE (account_id, seq)
) STRICT;
INSERT INTO events_new (id, account_id, seq, type, at, data)
    SELECT id, account_id, id, type, at, data FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

-- Per account, the highest position removed by retention: a cursor below it may have missed
-- events (the client reloads its state). Written by pruning only. The old global mark becomes
-- one per account that still has events (capped at its newest); an account whose events were
-- all pruned has none, so a cursor it holds is beyond its stream and answers a reset, as a
-- pruned one did.
CREATE TABLE event_positions (
    account_id     TEXT PRIMARY KEY,
    pruned_through INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO event_positions (account_id, pruned_through)
    SELECT account_id, min(max(seq), (SELECT pruned_through FROM event_retention)) FROM events GROUP BY account_id;
DROP TABLE event_retention;
