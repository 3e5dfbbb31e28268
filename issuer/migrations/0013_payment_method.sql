-- How an order is paid (the provider's payment method id, never card
-- data), so that a charge whose answer was lost can be asked again with
-- the same parameters and key, and the provider's answer learned.
ALTER TABLE orders ADD COLUMN payment_method TEXT;
CREATE INDEX orders_pending ON orders(updated_at) WHERE state = 'pending';
