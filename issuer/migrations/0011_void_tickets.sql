-- A ticket paid back is void: its seat may be sold, and ticketed, again
-- (the old ticket stays, revoked). A seat has one ticket that is not void.
ALTER TABLE tickets ADD COLUMN void INTEGER NOT NULL DEFAULT 0;
DROP INDEX tickets_seat;
CREATE UNIQUE INDEX tickets_seat ON tickets(event_id, seat) WHERE seat IS NOT NULL AND void = 0;
