//! Events written once over the seam: the row the ack path inserts, and reading and pruning
//! them (the ack path's batching is `group_commit`'s).

use super::db::{Arg, Dialect, Exec, Row};
use super::queue::opt_state;
use super::storable::EventFields;
use chrono::{DateTime, Utc};

use super::{
    EventFilter, EventRecord, EventSummary, MinuteCount, NewEvent, PruneCursor, PruneScope,
    PrunedBatch, Store, StoreError,
};

/// A verified delivery's event as it is stored: [`NewEvent`] made storable and owned, so that it
/// can cross to the group-commit writer. The body is shared with the request (`Bytes`), not
/// copied.
pub(super) struct EventRow {
    pub webhook_id: String,
    pub webhook_timestamp: i64,
    pub fields: EventFields,
    pub status: &'static str,
    pub scheme: &'static str,
    /// The kept headers as JSON text, serialised once here (both backends bind it as text).
    pub headers: String,
    pub body: bytes::Bytes,
    /// The delivery span's `traceparent`; `None` (NULL) when traces are not exported.
    pub trace_context: Option<String>,
}

impl EventRow {
    pub fn from(event: &NewEvent<'_>) -> EventRow {
        EventRow {
            webhook_id: event.webhook_id.to_owned(),
            webhook_timestamp: event.webhook_timestamp,
            fields: event.storable_fields(),
            status: event.envelope.status.as_str(),
            scheme: event.scheme.as_str(),
            headers: event.headers.to_string(),
            body: event.body.clone(),
            trace_context: event.trace_context.map(str::to_owned),
        }
    }

    /// The parameters of one row of [`insert_many`], in order.
    pub fn insert_args(&self) -> [Arg<'_>; INSERT_ARGS] {
        [
            Arg::Text(&self.webhook_id),
            Arg::Int(self.webhook_timestamp),
            Arg::OptText(self.fields.event_type.as_deref()),
            Arg::OptText(self.fields.resource_id.as_deref()),
            Arg::Text(self.status),
            Arg::Text(self.scheme),
            Arg::Text(&self.headers),
            Arg::Bytes(self.body.as_ref()),
            Arg::OptText(self.fields.altered.as_deref()),
            Arg::OptText(self.trace_context.as_deref()),
        ]
    }
}

/// Parameters per row of [`insert_many`].
pub(super) const INSERT_ARGS: usize = 10;

/// The insert of `rows` events at once (`$1`..`$10` the first, `$11`..`$20` the second, …, see
/// [`EventRow::insert_args`]), returning the id and `webhook_id` of each one inserted; a
/// duplicate `webhook-id` inserts nothing and returns no row.
pub(super) fn insert_many(d: Dialect, rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let param = |n: usize| format!("${}", row * INSERT_ARGS + n);
            let mut params: Vec<String> = (1..=INSERT_ARGS).map(param).collect();
            params[6] = d.json_param(&params[6]); // headers
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO events
             (webhook_id, webhook_timestamp, event_type, resource_id, status, scheme, headers,
              body, altered, trace_context)
         VALUES {}
         ON CONFLICT (webhook_id) DO NOTHING
         RETURNING id, webhook_id",
        values.join(", ")
    )
}

/// What a list shows of an event (never its body: a list of large bodies would be slow).
const SUMMARY_COLUMNS: &str = "e.id, e.webhook_id, e.event_type, e.resource_id, e.status, e.scheme,
    e.received_at, j.state AS job_state";
const FROM: &str = "FROM events e LEFT JOIN jobs j ON j.event_id = e.id";

/// Old enough, and finished (or dead-lettered when asked): never a job still in flight.
const PRUNABLE: &str =
    "e.received_at < $1 AND (j.id IS NULL OR j.state IN ('completed', 'cancelled')
    OR ($2 AND j.state = 'discarded'))";

impl Store {
    /// The newest events first (by row id, which follows arrival), a page of `limit` from the
    /// filter's cursor.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        limit: i64,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} {FROM}
             WHERE ($2 IS NULL OR e.event_type = $2)
               AND ($3 IS NULL OR e.status = $3)
               AND ($4 IS NULL OR e.received_at >= $4)
               AND ($5 IS NULL OR e.received_at < $5)
               AND ($6 IS NULL OR e.scheme = $6)
               AND ($7 IS NULL OR e.resource_id = $7)
               AND ($8 IS NULL OR e.webhook_id LIKE $8 ESCAPE '\\')
               AND ($9 IS NULL OR e.id < $9)
             ORDER BY e.id DESC
             LIMIT $1"
        );
        let prefix = filter.webhook_id_prefix.as_deref().map(like_prefix);
        let args = [
            Arg::Int(limit.max(0)),
            Arg::OptText(filter.event_type.as_deref()),
            Arg::OptText(filter.status.as_deref()),
            Arg::OptTime(filter.since),
            Arg::OptTime(filter.until),
            Arg::OptText(filter.scheme.as_deref()),
            Arg::OptText(filter.resource_id.as_deref()),
            Arg::OptText(prefix.as_deref()),
            Arg::OptInt(filter.before),
        ];
        let rows = (&self.db).fetch_all(&sql, &args).await?;
        rows.iter().map(summary).collect()
    }

    /// Events received per minute since `since`, by their job's state: the dashboard's chart.
    pub async fn events_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<MinuteCount>, StoreError> {
        let sql = format!(
            "SELECT {minute} AS minute, j.state AS job_state, count(*) AS n {FROM}
             WHERE e.received_at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
            minute = self.dialect().minute_of("e.received_at")
        );
        let rows = (&self.db)
            .fetch_all(&sql, &[Arg::OptTime(Some(since))])
            .await?;
        rows.iter()
            .map(|row| {
                Ok(MinuteCount {
                    minute: row.get("minute")?,
                    job_state: opt_state(row, "job_state")?,
                    count: row.get("n")?,
                })
            })
            .collect()
    }

    pub async fn find_event(&self, webhook_id: &str) -> Result<Option<EventRecord>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, e.webhook_timestamp, e.headers, e.altered, e.body
             {FROM} WHERE e.webhook_id = $1"
        );
        let row = (&self.db)
            .fetch_optional(&sql, &[Arg::Text(webhook_id)])
            .await?;
        row.map(|row| {
            Ok(EventRecord {
                summary: summary(&row)?,
                webhook_timestamp: row.get("webhook_timestamp")?,
                headers: row.get("headers")?,
                altered: row.get("altered")?,
                body: row.get("body")?,
            })
        })
        .transpose()
    }

    /// Deletes up to `batch` prunable events after `after`, oldest first; returns how many and
    /// where the next batch starts. Small batches keep each statement short, so pruning never
    /// holds locks the ack path waits on for long. Their jobs, results, outcomes and
    /// deliveries go with them (`ON DELETE CASCADE`; SQLite enforces it because every
    /// connection turns `foreign_keys` on).
    ///
    /// The batch is read from `events_received_at_idx` between the cursor and the cutoff (the
    /// column the scope filters on, in the order it deletes in), so a batch costs its own rows
    /// wherever the prune has got to. Ordered by id from the start instead, as it was, each
    /// batch walked `events_pkey` and `jobs_event_id_key` again over the dead entries of every
    /// earlier batch and the rows kept: over 3 million events the rate fell from 7,288 to
    /// 2,457 events/s, and the batch that found nothing left took 3.4 s (BENCHMARKS.md,
    /// "Pruning at volume"). The job is joined by its unique `event_id`, one probe per row.
    pub async fn prune_batch(
        &self,
        scope: &PruneScope,
        after: PruneCursor,
        batch: i64,
    ) -> Result<PrunedBatch, StoreError> {
        let sql = format!(
            "DELETE FROM events WHERE id IN (
                 SELECT e.id {FROM}
                 WHERE (e.received_at, e.id) > ($4, $5) AND {PRUNABLE}
                 ORDER BY e.received_at, e.id LIMIT $3)
             RETURNING id, received_at"
        );
        let args = [
            Arg::OptTime(Some(scope.cutoff)),
            Arg::Bool(scope.include_discarded),
            Arg::Int(batch.max(0)),
            Arg::OptTime(Some(after.received_at)),
            Arg::Int(after.id),
        ];
        let rows = (&self.db).fetch_all(&sql, &args).await?;
        let mut next = after;
        for row in &rows {
            let deleted = PruneCursor {
                received_at: row.time("received_at")?,
                id: row.get("id")?,
            };
            next = next.max(deleted);
        }
        Ok(PrunedBatch {
            deleted: rows.len() as u64,
            next,
        })
    }

    /// How many events [`Store::prune_batch`] would delete in all (for `--dry-run`).
    pub async fn count_prunable(&self, scope: &PruneScope) -> Result<u64, StoreError> {
        let sql = format!("SELECT count(*) AS n {FROM} WHERE {PRUNABLE}");
        let args = [
            Arg::OptTime(Some(scope.cutoff)),
            Arg::Bool(scope.include_discarded),
        ];
        let row = (&self.db).fetch_optional(&sql, &args).await?;
        let count: i64 = row.map(|row| row.get("n")).transpose()?.unwrap_or(0);
        Ok(count as u64)
    }
}

fn summary(row: &Row) -> Result<EventSummary, StoreError> {
    Ok(EventSummary {
        id: row.get("id")?,
        webhook_id: row.get("webhook_id")?,
        event_type: row.get("event_type")?,
        resource_id: row.get("resource_id")?,
        status: row.get("status")?,
        scheme: row.get("scheme")?,
        received_at: row.time("received_at")?,
        job_state: opt_state(row, "job_state")?,
    })
}

/// A `LIKE` pattern matching text that starts with `prefix`, its wildcards escaped (with `\\`,
/// the statement's `ESCAPE`).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn a_prefix_matches_literally() {
        assert_eq!(like_prefix("msg_1%"), "msg\\_1\\%%");
        assert_eq!(like_prefix("a\\b"), "a\\\\b%");
        assert_eq!(like_prefix(""), "%");
    }
}
