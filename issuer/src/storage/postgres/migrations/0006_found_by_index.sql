-- Free places are looked for among the unsold only: near a sell-out a
-- buyer no longer walks past every place sold. Holding and letting go do
-- not touch the index (`order_id` changes only when places are sold or
-- paid back), so those updates stay in place.
CREATE INDEX places_unsold ON places (category_id, n) WHERE order_id IS NULL;

-- The sequencer takes the changes not yet numbered by their ids.
CREATE INDEX place_changes_to_number ON place_changes (id) WHERE seq IS NULL;
-- Those of one event are counted from it too (there are few): an index
-- fewer to write for every change.
DROP INDEX place_changes_unnumbered;
