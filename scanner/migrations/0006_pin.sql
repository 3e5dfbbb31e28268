-- The SHA-256 fingerprint of the sync node's TLS certificate, from the
-- enrollment token: the only certificate this device accepts from it.
ALTER TABLE sync_state ADD COLUMN pin TEXT;
