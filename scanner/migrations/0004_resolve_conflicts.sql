-- Another device's record may be replaced by the version every replica
-- keeps when that device wrote two versions of one index (shared::merge::
-- supersedes); this device's own records are never changed.
DROP TRIGGER scans_append_only_update;
CREATE TRIGGER scans_own_append_only_update BEFORE UPDATE ON scans
WHEN OLD.device_id = (SELECT device_id FROM device)
BEGIN SELECT RAISE(ABORT, 'the scan log is append-only'); END;
