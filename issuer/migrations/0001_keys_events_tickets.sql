-- Events an organizer sells tickets for. Times are unix seconds.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    starts_at  INTEGER NOT NULL,
    ends_at    INTEGER NOT NULL,
    CHECK (ends_at >= starts_at)
);

-- Ed25519 signing keys. The secret seed lives in keys/<key_id>.key (mode 0600),
-- never in the database, so a copy of the database leaks no key.
CREATE TABLE signing_keys (
    key_id      TEXT    PRIMARY KEY,
    public_key  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

-- One bulk issuance run.
CREATE TABLE batches (
    id          INTEGER PRIMARY KEY,
    event_id    INTEGER NOT NULL REFERENCES events(id),
    category_id INTEGER NOT NULL,
    key_id      TEXT    NOT NULL REFERENCES signing_keys(key_id),
    count       INTEGER NOT NULL,
    out_dir     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    -- 'recorded' once the tickets are committed, 'written' once every file is on disk.
    state       TEXT    NOT NULL CHECK (state IN ('recorded', 'written'))
);

-- Every ticket ever signed: what revocation, re-export and key retirement need.
CREATE TABLE tickets (
    event_id    INTEGER NOT NULL REFERENCES events(id),
    ticket_id   BLOB    NOT NULL CHECK (length(ticket_id) = 16),
    batch_id    INTEGER NOT NULL REFERENCES batches(id),
    category_id INTEGER NOT NULL,
    seat        TEXT,
    multi_entry INTEGER NOT NULL,
    valid_from  INTEGER NOT NULL,
    valid_until INTEGER NOT NULL,
    key_id      TEXT    NOT NULL REFERENCES signing_keys(key_id),
    code        TEXT    NOT NULL,
    PRIMARY KEY (event_id, ticket_id)
) WITHOUT ROWID;

-- A seat is sold once per event.
CREATE UNIQUE INDEX tickets_seat ON tickets(event_id, seat) WHERE seat IS NOT NULL;
CREATE INDEX tickets_batch ON tickets(batch_id);
CREATE INDEX tickets_key_event ON tickets(key_id, event_id);
