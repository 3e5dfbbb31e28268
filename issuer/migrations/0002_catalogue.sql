-- Organizers sell through the API, each with tokens (only their SHA-256 is
-- kept) and their own venues and events.
CREATE TABLE organizers (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE organizer_tokens (
    token_hash   BLOB    PRIMARY KEY CHECK (length(token_hash) = 32),
    organizer_id INTEGER NOT NULL REFERENCES organizers(id),
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
) WITHOUT ROWID;

-- A venue's seating plan is kept whole as JSON (checked before it is
-- stored); its seats are listed per event in the inventory.
CREATE TABLE venues (
    id           INTEGER PRIMARY KEY,
    organizer_id INTEGER NOT NULL REFERENCES organizers(id),
    name         TEXT    NOT NULL,
    city         TEXT    NOT NULL,
    address      TEXT    NOT NULL,
    plan         TEXT    NOT NULL
);

-- Events made with `issuer events add` before the API have no organizer
-- and no venue; they stay what they were.
ALTER TABLE events ADD COLUMN organizer_id INTEGER REFERENCES organizers(id);
ALTER TABLE events ADD COLUMN venue_id INTEGER REFERENCES venues(id);
ALTER TABLE events ADD COLUMN description TEXT NOT NULL DEFAULT '';
-- A JSON list of names.
ALTER TABLE events ADD COLUMN performers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE events ADD COLUMN genre TEXT NOT NULL DEFAULT 'other';
ALTER TABLE events ADD COLUMN city TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'on_sale'
    CHECK (status IN ('draft', 'on_sale', 'cancelled', 'ended'));
CREATE INDEX events_start ON events(starts_at, id);
CREATE INDEX events_organizer ON events(organizer_id);

CREATE TABLE categories (
    id          INTEGER PRIMARY KEY,
    event_id    INTEGER NOT NULL REFERENCES events(id),
    name        TEXT    NOT NULL,
    -- The base price in minor units, for browsing by price; the tiers are
    -- in `pricing` (JSON).
    price       INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    pricing     TEXT    NOT NULL,
    -- JSON: {"kind": "seats", "sections": [...]} or {"kind": "quota", ...}.
    places      TEXT    NOT NULL,
    sale_starts INTEGER NOT NULL,
    sale_ends   INTEGER NOT NULL,
    per_order   INTEGER NOT NULL
);
CREATE INDEX categories_event ON categories(event_id);
