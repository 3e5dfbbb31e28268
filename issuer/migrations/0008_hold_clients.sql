-- The address a hold came from, so that one address cannot hold a whole
-- event however slowly it asks.
ALTER TABLE holds ADD COLUMN client TEXT;
CREATE INDEX holds_client ON holds(event_id, client) WHERE client IS NOT NULL;
