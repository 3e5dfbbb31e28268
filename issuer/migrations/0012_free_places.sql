-- Unsold places by when their hold ends: a free place (held_until in the
-- past, or 0) is found without passing over the held ones.
CREATE INDEX places_free ON places(category_id, held_until) WHERE order_id IS NULL;
