-- What was changed to make a verified delivery's fields storable (NUL escaped, long text cut),
-- e.g. "event_type nul escaped". NULL when nothing was: the raw body is always byte for byte.
ALTER TABLE events ADD COLUMN altered TEXT;
