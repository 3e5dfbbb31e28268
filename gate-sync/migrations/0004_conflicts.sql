-- For an index its device wrote twice (a faulty or hostile device): the
-- version not kept, as proof against the device. With `records`, the two
-- greatest versions seen (shared::merge::supersedes), alike on every replica.
CREATE TABLE conflicts (
    device_id TEXT    NOT NULL,
    idx       INTEGER NOT NULL,
    body      TEXT    NOT NULL,
    PRIMARY KEY (device_id, idx)
) WITHOUT ROWID;
