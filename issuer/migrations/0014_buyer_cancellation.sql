-- Until when (unix seconds) buyers may cancel their own paid orders, paid
-- back in full; NULL: only the organizer cancels.
ALTER TABLE events ADD COLUMN buyers_cancel_until INTEGER;
