-- What the node hands to every device: the keyset and the revocation list,
-- as imported by the organizer (validated before they are stored).
CREATE TABLE distribution (
    name       TEXT    PRIMARY KEY CHECK (name IN ('keyset', 'revocations')),
    body       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
