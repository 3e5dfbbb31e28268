-- A ticket code carries its category as a 16-bit number: each category
-- gets one within its event, 1, 2, ...
ALTER TABLE categories ADD COLUMN number INTEGER NOT NULL DEFAULT 0;
UPDATE categories SET number = (
    SELECT count(*) FROM categories c WHERE c.event_id = categories.event_id AND c.id <= categories.id
);

-- A paid order's tickets are a batch of their own in `tickets`.
ALTER TABLE orders ADD COLUMN batch_id INTEGER REFERENCES batches(id);
