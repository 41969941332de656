-- A gift's receiver finds it by time: the ledger names the other person of each gift row
-- (GET /v1/cards/{storeId}/ledger), for the sender through gifts_sender, for the receiver here.
CREATE INDEX gifts_receiver ON gifts(to_id, at);
