-- The SQLite twin of migrations/postgres/20261203000001_trace_context.sql.
ALTER TABLE events ADD COLUMN trace_context TEXT;
