-- Every place an event sells, one row each: a seat of a seated category
-- (with its key) or a place of a standing quota. A place is held while
-- `held_until` (unix ms) is in the future, and sold once `order_id` is
-- set: an expired hold simply stops counting, with no sweeper.
CREATE TABLE places (
    event_id    INTEGER NOT NULL REFERENCES events(id),
    category_id INTEGER NOT NULL REFERENCES categories(id),
    -- 1, 2, ... within the category, in the plan's order.
    n           INTEGER NOT NULL,
    seat_key    TEXT,
    -- The hold that last took the place (its token's SHA-256).
    hold        BLOB,
    held_until  INTEGER NOT NULL DEFAULT 0,
    order_id    INTEGER,
    PRIMARY KEY (category_id, n)
) WITHOUT ROWID;
CREATE UNIQUE INDEX places_seat ON places(event_id, seat_key) WHERE seat_key IS NOT NULL;
CREATE INDEX places_hold ON places(hold) WHERE hold IS NOT NULL;

-- A buyer's hold: places taken all or nothing, at prices fixed when taken.
CREATE TABLE holds (
    token_hash  BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
    event_id    INTEGER NOT NULL REFERENCES events(id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    -- Set when the buyer lets the places go before they expire.
    released_at INTEGER,
    currency    TEXT    NOT NULL,
    total       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE hold_items (
    hold        BLOB    NOT NULL REFERENCES holds(token_hash),
    category_id INTEGER NOT NULL,
    n           INTEGER NOT NULL,
    seat_key    TEXT,
    price       INTEGER NOT NULL,
    PRIMARY KEY (hold, category_id, n)
) WITHOUT ROWID;
