//! Retention: old, finished events (with their jobs and results rows) are pruned in the
//! background in small batches, and on demand by `gemhook prune`.
//!
//! The floor is two days: Gemini retries a delivery for 24 hours, and deduplication works only
//! while the `webhook-id` is still stored. Dead letters are kept until retried or pruned
//! explicitly (`--include-discarded`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::store::{PruneCursor, PruneScope, Store, StoreError};
use crate::telemetry::error_chain;

/// Shortest retention allowed: Gemini's 24 h of retries, plus a day of margin.
pub const MIN_RETENTION: Duration = Duration::from_secs(2 * 24 * 3600);

/// Rows per delete statement.
pub const PRUNE_BATCH: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("{0:?} is not an age: use a number with d, h, m or s (e.g. 7d, 48h)")]
    NotAnAge(String),
    #[error(
        "retention below 2 days is refused: Gemini retries for 24 hours, and a webhook-id pruned before then would be accepted again as new"
    )]
    TooShort,
}

/// Parses `7d`, `48h`, `90m`, `3600s` (a bare number is days).
pub fn parse_age(text: &str) -> Result<Duration, RetentionError> {
    let text = text.trim();
    let not_an_age = || RetentionError::NotAnAge(text.to_owned());
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "d"),
    };
    let number: u64 = number.parse().map_err(|_| not_an_age())?;
    let seconds = match unit {
        "d" => number.checked_mul(24 * 3600),
        "h" => number.checked_mul(3600),
        "m" => number.checked_mul(60),
        "s" => Some(number),
        _ => None,
    }
    .ok_or_else(not_an_age)?;
    Ok(Duration::from_secs(seconds))
}

/// Refuses a retention that would break deduplication.
pub fn check(age: Duration) -> Result<Duration, RetentionError> {
    if age < MIN_RETENTION {
        Err(RetentionError::TooShort)
    } else {
        Ok(age)
    }
}

/// The scope for events older than `age` as of `now`.
pub fn scope(age: Duration, now: DateTime<Utc>, include_discarded: bool) -> PruneScope {
    let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    PruneScope {
        cutoff: now
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        include_discarded,
    }
}

/// Prunes everything in scope, batch by batch; returns how many events were deleted.
pub async fn prune(store: &Store, scope: &PruneScope) -> Result<u64, StoreError> {
    let mut total = 0;
    let mut cursor = PruneCursor::default();
    loop {
        let batch = store.prune_batch(scope, cursor, PRUNE_BATCH).await?;
        total += batch.deleted;
        cursor = batch.next;
        if batch.deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
        // Let the ack path have the table between batches.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prunes every `interval` until `stop`. Several replicas doing this at once is harmless: the
/// deletes are idempotent.
pub fn spawn_pruner(
    store: Store,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let scope = scope(retention, Utc::now(), false);
            match prune(&store, &scope).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, cutoff = %scope.cutoff, "pruned old events"),
                Err(error) => tracing::warn!(error = %error_chain(&error), "pruning failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_with_their_unit_and_bare_numbers_are_days() {
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_age("48h").unwrap(), Duration::from_secs(48 * 3600));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_age("3").unwrap(), Duration::from_secs(3 * 86400));
        assert!(parse_age("7w").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-1d").is_err());
    }

    #[test]
    fn retention_under_two_days_is_refused() {
        assert_eq!(
            check(parse_age("47h").unwrap()),
            Err(RetentionError::TooShort)
        );
        assert!(check(parse_age("2d").unwrap()).is_ok());
    }
}
