-- One-time enrollment tokens an organizer hands to a device (hashes only).
CREATE TABLE enrollments (
    token_hash TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    -- The device that used it; NULL while unused.
    device_id  TEXT
);

-- Enrolled devices and the hash of the token each authenticates with.
CREATE TABLE device_auth (
    device_id   TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL,
    revoked_at  INTEGER
);
