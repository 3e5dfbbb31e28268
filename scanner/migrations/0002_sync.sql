-- Where this device syncs, how far its own records have been pushed, and how
-- the last attempt went.
CREATE TABLE sync_state (
    singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
    server       TEXT,
    pushed_idx   INTEGER NOT NULL DEFAULT 0,
    last_sync_ms INTEGER,
    last_error   TEXT
);
INSERT INTO sync_state (singleton) VALUES (1);
