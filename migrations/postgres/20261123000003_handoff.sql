-- The hand-off to the user's application. One outcome per event, written in the transaction
-- that finishes its job (a replay rewrites it and bumps `revision`); one delivery per
-- (outcome, sink), each its own small queue entry with retries and a dead letter.
CREATE TABLE outcomes (
    id         BIGSERIAL PRIMARY KEY,
    event_id   BIGINT      NOT NULL UNIQUE REFERENCES events (id) ON DELETE CASCADE,
    revision   INTEGER     NOT NULL DEFAULT 1,
    body       JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    id           BIGSERIAL PRIMARY KEY,
    outcome_id   BIGINT      NOT NULL REFERENCES outcomes (id) ON DELETE CASCADE,
    -- The sink's name in the configuration. The outgoing webhook-id / Nats-Msg-Id derives
    -- from (event webhook-id, outcome revision, sink): stable across retries, new on a replay.
    sink         TEXT        NOT NULL,
    state        TEXT        NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt      INTEGER     NOT NULL DEFAULT 0,
    scheduled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_by    TEXT,
    locked_until TIMESTAMPTZ,
    attempted_at TIMESTAMPTZ,
    finalized_at TIMESTAMPTZ,
    errors       JSONB       NOT NULL DEFAULT '[]'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (outcome_id, sink)
);

CREATE INDEX deliveries_runnable_idx ON deliveries (scheduled_at, id)
    WHERE state IN ('available', 'retryable');
CREATE INDEX deliveries_state_idx ON deliveries (state);
