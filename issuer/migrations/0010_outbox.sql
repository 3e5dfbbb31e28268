-- Every message owed to a buyer, written in the transaction that gives
-- cause to it (an order paid, paid back), so none is lost to a crash; the
-- mail worker composes and delivers it, retrying with growing pauses.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    order_code  TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('tickets', 'refund', 'late_refund')),
    created_at  INTEGER NOT NULL,
    -- When a worker may (next) take it; a worker that takes it moves this
    -- on by its lease, so two workers never send it at once.
    next_try_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    sent_at     INTEGER,
    -- Set when it is given up.
    failed_at   INTEGER,
    last_error  TEXT,
    UNIQUE (order_code, kind)
);
CREATE INDEX outbox_due ON outbox(next_try_at) WHERE sent_at IS NULL AND failed_at IS NULL;
