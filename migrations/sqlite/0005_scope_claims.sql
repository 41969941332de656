-- One row per scope a write counts or limits in (a store's walk-ins, a customer's requests): a
-- write that reads or counts in a scope first updates its row, so two writers of one scope
-- cannot both commit without seeing each other on an engine whose writers run concurrently
-- under snapshot isolation (PostgreSQL's REPEATABLE READ refuses the later one, which runs
-- again). SQLite's single writer needs none of it; the table keeps the schemas equal and the
-- statements shared. Rows untouched for a day are pruned.
CREATE TABLE scope_claims (
    scope TEXT PRIMARY KEY,
    at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX scope_claims_age ON scope_claims(at);
