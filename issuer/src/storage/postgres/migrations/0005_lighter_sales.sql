-- The rows every sale writes no longer check their parent rows by the
-- database. Each such check share-locks the parent (the event's row, for
-- every hold and every change of the feed), and with thousands of buyers
-- at once those locks pile up on one row, every new one rewriting the
-- list of the others. What the checks guarded, the statements that write
-- these rows ensure: they read the event or the hold in the same
-- transaction, and no event, hold, order or batch is ever deleted.
ALTER TABLE holds DROP CONSTRAINT holds_event_id_fkey;
ALTER TABLE hold_items DROP CONSTRAINT hold_items_hold_fkey;
ALTER TABLE place_changes DROP CONSTRAINT place_changes_event_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_hold_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_event_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_batch_id_fkey;
ALTER TABLE batches DROP CONSTRAINT batches_event_id_fkey;
ALTER TABLE tickets DROP CONSTRAINT tickets_event_id_fkey;
ALTER TABLE tickets DROP CONSTRAINT tickets_batch_id_fkey;

-- Every change of the live feed is written once and numbered once: an
-- index fewer to write each time. Old changes are cleared by their ids,
-- which come in the order of their times.
DROP INDEX place_changes_at;

-- The numbers of each event's changes likewise: a change of an event that
-- is not there must not stop the numbering of every other.
ALTER TABLE feed_seq DROP CONSTRAINT feed_seq_event_id_fkey;
