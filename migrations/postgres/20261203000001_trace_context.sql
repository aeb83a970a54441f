-- The W3C `traceparent` of the delivery's span, when traces are exported (NULL otherwise), so
-- the worker and the dispatcher, in this process or another, continue the delivery's trace.
-- Nullable without a default: adding it rewrites no row.
ALTER TABLE events ADD COLUMN trace_context TEXT;
