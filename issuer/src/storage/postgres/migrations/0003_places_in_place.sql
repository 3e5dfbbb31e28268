-- Free places are found by their category's key (from a random place on
-- for a quota; a category's free seats at once for the best seats): an
-- index on when places are held would be rewritten by every hold and
-- release, and would keep those updates from being made in place (HOT),
-- for which pages keep room.
DROP INDEX places_free;
ALTER TABLE places SET (fillfactor = 80);
