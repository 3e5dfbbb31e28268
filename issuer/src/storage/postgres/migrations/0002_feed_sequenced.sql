-- The live feed's numbers are given after the commit, not in it: a
-- transaction that moves places writes its changes unnumbered, under a
-- shared lock on the event, and a sequencer numbers them in the order of
-- their ids, under that lock held exclusively, so that no transaction
-- selling an event waits for another's commit. `pos` orders every event's
-- numbered changes for the processes fanning them out (given by one
-- sequencer at a time, in the order their commits are seen).
DROP INDEX place_changes_xid;
ALTER TABLE place_changes DROP COLUMN xid;
ALTER TABLE place_changes ALTER COLUMN seq DROP NOT NULL;
ALTER TABLE place_changes ADD COLUMN pos BIGINT;
UPDATE place_changes SET pos = id;
CREATE UNIQUE INDEX place_changes_pos ON place_changes (pos);
CREATE INDEX place_changes_unnumbered ON place_changes (event_id, id) WHERE seq IS NULL;

CREATE TABLE feed_pos (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    pos BIGINT  NOT NULL
);
INSERT INTO feed_pos (pos) SELECT coalesce(max(pos), 0) FROM place_changes;
