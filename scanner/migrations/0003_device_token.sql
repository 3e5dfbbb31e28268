-- The token gate-sync gave this device at enrollment; sent with every sync.
ALTER TABLE sync_state ADD COLUMN device_token TEXT;
