-- Tickets no longer good: a cancelled or refunded order's, a reissued
-- ticket's old one. `seq` orders the feed gates and nodes follow.
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   INTEGER NOT NULL REFERENCES events(id),
    ticket_id  BLOB    NOT NULL CHECK (length(ticket_id) = 16),
    revoked_at INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    UNIQUE (event_id, ticket_id)
);
