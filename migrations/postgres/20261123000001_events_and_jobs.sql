-- Every verified delivery, kept byte for byte. `webhook_id` is the idempotency key: Gemini sends
-- the same id on every retry of one message, so the unique index makes duplicates harmless.
CREATE TABLE events (
    id                BIGSERIAL PRIMARY KEY,
    webhook_id        TEXT        NOT NULL UNIQUE,
    webhook_timestamp BIGINT      NOT NULL,
    event_type        TEXT,
    resource_id       TEXT,
    status            TEXT        NOT NULL CHECK (status IN ('accepted', 'ignored', 'unparseable')),
    scheme            TEXT        NOT NULL CHECK (scheme IN ('v1', 'v1a', 'jwt')),
    headers           JSONB       NOT NULL,
    body              BYTEA       NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX events_received_at_idx ON events (received_at DESC, id DESC);

-- The durable queue the worker consumes: one row per new event, inserted in the same statement
-- as the event. States are River's words; `discarded` is the dead letter.
CREATE TABLE jobs (
    id           BIGSERIAL PRIMARY KEY,
    event_id     BIGINT      NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    state        TEXT        NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt      INTEGER     NOT NULL DEFAULT 0,
    scheduled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The lease: a running job whose `locked_until` has passed belongs to a crashed worker.
    locked_by    TEXT,
    locked_until TIMESTAMPTZ,
    attempted_at TIMESTAMPTZ,
    finalized_at TIMESTAMPTZ,
    -- One object per failed attempt: {"attempt", "at", "error", "retryable"}.
    errors       JSONB       NOT NULL DEFAULT '[]'::jsonb,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id)
);

-- What a worker's claim scans: runnable jobs in schedule order. Partial, so finished jobs
-- (the vast majority over time) cost the claim nothing.
CREATE INDEX jobs_runnable_idx ON jobs (scheduled_at, id) WHERE state IN ('available', 'retryable');
CREATE INDEX jobs_state_idx ON jobs (state);
