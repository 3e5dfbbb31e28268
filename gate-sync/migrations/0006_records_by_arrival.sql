-- Records in the order they arrived (a rowid table, appended to at its
-- end), found by their key through an index. Kept in key order, as before,
-- every push of 200 gates wrote into 200 places of a tree of whole records.
CREATE TABLE records_by_arrival (
    device_id   TEXT    NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx > 0),
    body        TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);
INSERT INTO records_by_arrival (device_id, idx, body, received_at)
    SELECT device_id, idx, body, received_at FROM records ORDER BY received_at, device_id, idx;
DROP TRIGGER records_append_only_delete;
DROP TABLE records;
ALTER TABLE records_by_arrival RENAME TO records;
CREATE UNIQUE INDEX records_key ON records (device_id, idx);
CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'the merged log is grow-only'); END;
