-- Full-text search over what a buyer types: an event's name, performers,
-- venue, city and description. The row id is the event's id; the issuer
-- writes it with the event (no triggers: the venue's name is joined in).
CREATE VIRTUAL TABLE events_fts USING fts5(
    name, performers, venue, city, description,
    tokenize = 'unicode61 remove_diacritics 2'
);

INSERT INTO events_fts (rowid, name, performers, venue, city, description)
SELECT e.id, e.name, e.performers, v.name, e.city, e.description
FROM events e JOIN venues v ON v.id = e.venue_id;
