-- What every process of the shop must hold in its data directory (keys
-- never go into the database, only what tells them apart): the order
-- links' key's fingerprint, and the ids of the signing keys in use.
CREATE TABLE shop_keys (
    kind        TEXT NOT NULL CHECK (kind IN ('order-links', 'signing')),
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (kind, fingerprint)
);
