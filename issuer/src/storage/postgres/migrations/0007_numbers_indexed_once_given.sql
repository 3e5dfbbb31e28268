-- A change of the live feed is written without its numbers, and numbered
-- once it has committed (the sequencer). Its numbers are indexed from
-- then on only, not also while it waits with none: two index entries
-- fewer for every change. Readers ask for numbers above one they have,
-- which these indexes answer; each number is still given once. (An
-- event's changes still unnumbered are counted among all those waiting,
-- by `place_changes_to_number`: few, since the sequencer numbers them
-- every few milliseconds.)
ALTER TABLE place_changes DROP CONSTRAINT place_changes_event_id_seq_key;
CREATE UNIQUE INDEX place_changes_event_seq ON place_changes (event_id, seq)
    WHERE seq IS NOT NULL;
DROP INDEX place_changes_pos;
CREATE UNIQUE INDEX place_changes_pos ON place_changes (pos) WHERE pos IS NOT NULL;
