-- Every change of an event's places, as the live feed tells it: numbered
-- 1, 2, ... per event, so a watcher that reconnects asks for what came
-- after the last number it saw. `id` orders all events' changes, for the
-- process that fans them out.
CREATE TABLE place_changes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER NOT NULL REFERENCES events(id),
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    kind     TEXT    NOT NULL
        CHECK (kind IN ('held', 'released', 'expired', 'sold', 'refunded')),
    -- JSON: the keys of the seats that changed.
    seats    TEXT    NOT NULL,
    -- JSON: [[category id, places], ...], seats included.
    places   TEXT    NOT NULL,
    UNIQUE (event_id, seq)
);

-- A hold whose time passed is still lazily ignored by whoever takes its
-- places; `announced` says its expiry has been told to the live feed (and
-- its unsold places untied from it).
ALTER TABLE holds ADD COLUMN announced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX holds_unannounced ON holds(expires_at) WHERE announced = 0 AND released_at IS NULL;
