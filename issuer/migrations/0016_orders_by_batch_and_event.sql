-- A ticket is found by its id alone (its pictures), its order by the
-- ticket's batch, and an event's orders by the event (the organizer's
-- figures), without reading every ticket or order.
CREATE INDEX tickets_id ON tickets(ticket_id);
CREATE INDEX orders_batch ON orders(batch_id);
CREATE INDEX orders_event ON orders(event_id, state);
