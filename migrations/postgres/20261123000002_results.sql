-- What following an event's pointer produced: one row per job (a replay overwrites it).
CREATE TABLE results (
    id            BIGSERIAL PRIMARY KEY,
    job_id        BIGINT      NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    resource_kind TEXT        NOT NULL,
    resource_id   TEXT,
    -- stored: an object was written; recorded: a failure/expiry/cancellation was noted;
    -- nothing: nothing to follow (unknown type); not_followable: the job was discarded for it.
    outcome       TEXT        NOT NULL CHECK (outcome IN ('stored', 'recorded', 'nothing', 'not_followable')),
    location      TEXT,
    size_bytes    BIGINT,
    sha256        TEXT,
    -- lines / error_lines for batches, status for interactions, error_code / error_message
    -- for failures, user_metadata when the event carried it.
    summary       JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- "Was this resource already stored by another delivery?"
CREATE INDEX results_resource_idx ON results (resource_kind, resource_id) WHERE outcome = 'stored';
