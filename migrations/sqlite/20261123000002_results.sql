-- The SQLite twin of migrations/postgres/20261123000002_results.sql (types adapted as in
-- 20261123000001_events_and_jobs.sql).

-- What following an event's pointer produced: one row per job (a replay overwrites it).
CREATE TABLE results (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        INTEGER NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
    resource_kind TEXT    NOT NULL,
    resource_id   TEXT,
    -- stored: an object was written; recorded: a failure/expiry/cancellation was noted;
    -- nothing: nothing to follow (unknown type); not_followable: the job was discarded for it.
    outcome       TEXT    NOT NULL CHECK (outcome IN ('stored', 'recorded', 'nothing', 'not_followable')),
    location      TEXT,
    size_bytes    INTEGER,
    sha256        TEXT,
    -- lines / error_lines for batches, status for interactions, error_code / error_message
    -- for failures, user_metadata when the event carried it.
    summary       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(summary)),
    created_at    INTEGER NOT NULL
                  DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER))
) STRICT;

-- "Was this resource already stored by another delivery?"
CREATE INDEX results_resource_idx ON results (resource_kind, resource_id) WHERE outcome = 'stored';
