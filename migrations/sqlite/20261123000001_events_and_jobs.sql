-- The SQLite twin of migrations/postgres/20261123000001_events_and_jobs.sql: the same tables,
-- columns, constraints and state words. Adapted types:
--   * timestamps are INTEGER milliseconds since the Unix epoch (UTC), so ordering and
--     "now + lease" comparisons are plain integer arithmetic; the Rust side turns them into
--     DateTime<Utc>. The default below is the store's `now` (see src/store/sqlite.rs, NOW_MS).
--   * JSON columns are TEXT holding valid JSON (checked); bodies are BLOBs.
--   * STRICT tables, so a value of the wrong type is refused as Postgres would refuse it.
--   * AUTOINCREMENT, so an id is never reused (BIGSERIAL never reuses one either).

-- Every verified delivery, kept byte for byte. `webhook_id` is the idempotency key: Gemini sends
-- the same id on every retry of one message, so the unique index makes duplicates harmless.
CREATE TABLE events (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id        TEXT    NOT NULL UNIQUE,
    webhook_timestamp INTEGER NOT NULL,
    event_type        TEXT,
    resource_id       TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('accepted', 'ignored', 'unparseable')),
    scheme            TEXT    NOT NULL CHECK (scheme IN ('v1', 'v1a', 'jwt')),
    headers           TEXT    NOT NULL CHECK (json_valid(headers)),
    body              BLOB    NOT NULL,
    received_at       INTEGER NOT NULL
                      DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER))
) STRICT;

CREATE INDEX events_received_at_idx ON events (received_at DESC, id DESC);

-- The durable queue the worker consumes: one row per new event, inserted in the same transaction
-- as the event. States are River's words; `discarded` is the dead letter.
CREATE TABLE jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    state        TEXT    NOT NULL DEFAULT 'available'
                 CHECK (state IN ('available', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    scheduled_at INTEGER NOT NULL
                 DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    -- The lease: a running job whose `locked_until` has passed belongs to a crashed worker.
    locked_by    TEXT,
    locked_until INTEGER,
    attempted_at INTEGER,
    finalized_at INTEGER,
    -- One object per failed attempt: {"attempt", "at", "error", "retryable"}.
    errors       TEXT    NOT NULL DEFAULT '[]' CHECK (json_type(errors) = 'array'),
    created_at   INTEGER NOT NULL
                 DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    UNIQUE (event_id)
) STRICT;

-- What a worker's claim scans: runnable jobs in schedule order. Partial, so finished jobs
-- (the vast majority over time) cost the claim nothing. The claim repeats this exact IN list,
-- which is what lets SQLite's planner use a partial index.
CREATE INDEX jobs_runnable_idx ON jobs (scheduled_at, id) WHERE state IN ('available', 'retryable');
CREATE INDEX jobs_state_idx ON jobs (state);
