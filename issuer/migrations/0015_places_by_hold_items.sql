-- A hold's places are found through its items (the key of hold_items),
-- not through an index on places.hold: each hold and release of a place
-- updated that index twice, for the release alone to read it.
DROP INDEX places_hold;

-- A sold place is found by its order, when the order is paid back.
CREATE INDEX places_sold ON places(order_id) WHERE order_id IS NOT NULL;
