-- Every scan record of every device, as received: the grow-only set.
-- (device_id, idx) names a record everywhere; the body is its JSON.
CREATE TABLE records (
    device_id   TEXT    NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx > 0),
    body        TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (device_id, idx)
) WITHOUT ROWID;

-- When each device last pushed or pulled.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    last_sync INTEGER NOT NULL
);

CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'the merged log is grow-only'); END;
