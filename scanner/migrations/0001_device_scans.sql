-- The device: who this scanner is and what it trusts. One row.
CREATE TABLE device (
    singleton      INTEGER PRIMARY KEY CHECK (singleton = 1),
    device_id      TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    gate           TEXT    NOT NULL,
    keyset_json    TEXT    NOT NULL,
    skew_secs      INTEGER NOT NULL,
    provisioned_at INTEGER NOT NULL
);

-- Events this gate admits; none listed means every event the keyset covers.
CREATE TABLE admitted_events (event_id INTEGER PRIMARY KEY);

-- Tickets refused as revoked. A NULL event revokes the ticket id in any event.
CREATE TABLE revocations (
    event_id  INTEGER,
    ticket_id TEXT NOT NULL
);
CREATE INDEX revocations_ticket ON revocations(ticket_id);

-- The redemption log: one row per scan attempt, refused ones too, never
-- changed or deleted. (device_id, idx) names a record on every replica.
CREATE TABLE scans (
    device_id   TEXT    NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx > 0),
    event_id    INTEGER,
    ticket_id   TEXT,
    multi_entry INTEGER NOT NULL,
    category_id INTEGER NOT NULL,
    seat        TEXT    NOT NULL,
    direction   TEXT    NOT NULL CHECK (direction IN ('entry', 'exit')),
    result      TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    wall_ms     INTEGER NOT NULL,
    hlc         INTEGER NOT NULL,
    gate        TEXT    NOT NULL,
    device_name TEXT    NOT NULL,
    PRIMARY KEY (device_id, idx)
) WITHOUT ROWID;
CREATE INDEX scans_ticket ON scans(event_id, ticket_id) WHERE ticket_id IS NOT NULL;
CREATE INDEX scans_hlc ON scans(hlc);

CREATE TRIGGER scans_append_only_update BEFORE UPDATE ON scans
BEGIN SELECT RAISE(ABORT, 'the scan log is append-only'); END;
CREATE TRIGGER scans_append_only_delete BEFORE DELETE ON scans
BEGIN SELECT RAISE(ABORT, 'the scan log is append-only'); END;
