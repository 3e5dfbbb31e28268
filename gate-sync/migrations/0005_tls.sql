-- The node's own TLS certificate and its private key, made on first start;
-- clients pin the certificate's SHA-256. The database file is readable by
-- its owner only.
CREATE TABLE tls (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    cert_der  BLOB NOT NULL,
    key_der   BLOB NOT NULL
);
