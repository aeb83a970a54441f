-- The SQLite twin of migrations/postgres/20261202000001_event_alterations.sql.
ALTER TABLE events ADD COLUMN altered TEXT;
