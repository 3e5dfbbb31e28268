-- A buyer's order of the places of a hold, paid through the provider.
CREATE TABLE orders (
    id              INTEGER PRIMARY KEY,
    -- Shown to the buyer and the organizer.
    code            TEXT    NOT NULL UNIQUE,
    -- The SHA-256 of the order link's secret (guest checkout).
    secret_hash     BLOB    NOT NULL,
    hold            BLOB    NOT NULL REFERENCES holds(token_hash),
    event_id        INTEGER NOT NULL REFERENCES events(id),
    email           TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    currency        TEXT    NOT NULL,
    state           TEXT    NOT NULL
        CHECK (state IN ('pending', 'paid', 'failed', 'cancelled', 'refunded')),
    payment_intent  TEXT    UNIQUE,
    refund          TEXT,
    -- Why a payment was refused, or why a payment was paid back.
    note            TEXT,
    -- A retried request with the same key is answered this order; the
    -- key with another request is refused.
    idempotency_key TEXT    UNIQUE,
    request_hash    BLOB,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
-- One live order a hold: pending or paid.
CREATE UNIQUE INDEX orders_live_hold ON orders(hold) WHERE state IN ('pending', 'paid');
