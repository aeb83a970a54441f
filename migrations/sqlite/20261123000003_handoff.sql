-- The SQLite twin of migrations/postgres/20261123000003_handoff.sql (types adapted as in
-- 20261123000001_events_and_jobs.sql).

-- The hand-off to the user's application. One outcome per event, written in the transaction
-- that finishes its job (a replay rewrites it and bumps `revision`); one delivery per
-- (outcome, sink), each its own small queue entry with retries and a dead letter.
CREATE TABLE outcomes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   INTEGER NOT NULL UNIQUE REFERENCES events (id) ON DELETE CASCADE,
    revision   INTEGER NOT NULL DEFAULT 1,
    body       TEXT    NOT NULL CHECK (json_valid(body)),
    created_at INTEGER NOT NULL
               DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER))
) STRICT;

CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    outcome_id   INTEGER NOT NULL REFERENCES outcomes (id) ON DELETE CASCADE,
    -- The sink's name in the configuration. The outgoing webhook-id / Nats-Msg-Id derives
    -- from (event webhook-id, outcome revision, sink): stable across retries, new on a replay.
    sink         TEXT    NOT NULL,
    state        TEXT    NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    scheduled_at INTEGER NOT NULL
                 DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    locked_by    TEXT,
    locked_until INTEGER,
    attempted_at INTEGER,
    finalized_at INTEGER,
    errors       TEXT    NOT NULL DEFAULT '[]' CHECK (json_type(errors) = 'array'),
    created_at   INTEGER NOT NULL
                 DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    UNIQUE (outcome_id, sink)
) STRICT;

CREATE INDEX deliveries_runnable_idx ON deliveries (scheduled_at, id)
    WHERE state IN ('available', 'retryable');
CREATE INDEX deliveries_state_idx ON deliveries (state);
