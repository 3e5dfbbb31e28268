-- Devices sign what they write (shared::device). The device's signing
-- seed (hex) lives here, in a file only its owner can read; its id is the
-- start of the SHA-256 of its public key.
ALTER TABLE device ADD COLUMN device_seed TEXT;

-- Every record carries the ticket's code as proof, the hash of its
-- device's record before it, the device's key (first record only) and the
-- device's signature. Records written before this are empty here and can
-- no longer be synced.
ALTER TABLE scans ADD COLUMN proof TEXT;
ALTER TABLE scans ADD COLUMN prev TEXT NOT NULL DEFAULT '';
ALTER TABLE scans ADD COLUMN device_key TEXT;
ALTER TABLE scans ADD COLUMN sig TEXT NOT NULL DEFAULT '';

-- For an index another device wrote twice: the version not kept, as proof
-- against that device (the same on every replica).
CREATE TABLE conflicts (
    device_id TEXT    NOT NULL,
    idx       INTEGER NOT NULL,
    body      TEXT    NOT NULL,
    PRIMARY KEY (device_id, idx)
) WITHOUT ROWID;
