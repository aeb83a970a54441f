//! A Postgres that turned read-only (a failed-over primary, `default_transaction_read_only`)
//! and turned writable again: readiness reports it, and the pool sheds the connections that
//! kept the read-only session default.
//!
//! `ALTER DATABASE ... SET default_transaction_read_only` applies to sessions opened after
//! it, so connections opened during the read-only spell stay read-only after the database is
//! writable again, until the pool retires them (idle or lifetime timeouts: minutes). Checking
//! every connection at every acquire would cost a round trip on the ack path; instead the check
//! runs only for a while after a read-only refusal was seen, which is when stale connections
//! can exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx::pool::PoolConnectionMetadata;

use super::StoreError;

/// How long after the last read-only refusal acquired connections are checked. Longer than
/// a readiness probe's period, so probes keep it armed for as long as the spell lasts.
const WATCH_FOR: Duration = Duration::from_secs(60);

/// `read_only_sql_transaction`: a write in a read-only transaction.
const READ_ONLY_SQLSTATE: &str = "25006";

/// Is this session read-only: in recovery (a standby), or read-only by default.
pub(super) const READ_ONLY_QUERY: &str =
    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'";

#[derive(Debug)]
pub(super) struct ReadOnlyWatch {
    start: Instant,
    /// Milliseconds after `start` of the last read-only sighting, plus one; 0 for never.
    last_seen: AtomicU64,
}

impl ReadOnlyWatch {
    pub(super) fn new() -> Arc<ReadOnlyWatch> {
        Arc::new(ReadOnlyWatch {
            start: Instant::now(),
            last_seen: AtomicU64::new(0),
        })
    }

    pub(super) fn seen(&self) {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Notes `error` when it is a read-only refusal.
    pub(super) fn note(&self, error: &StoreError) {
        let sqlx_error = match error {
            StoreError::Database(error) => error,
            StoreError::Batch(error) => error.as_ref(),
            _ => return,
        };
        if sqlx_error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == READ_ONLY_SQLSTATE)
        {
            self.seen();
        }
    }

    fn armed(&self) -> bool {
        let last = self.last_seen.load(Ordering::Relaxed);
        last != 0
            && self.start.elapsed().as_millis() as u64 + 1 - last < WATCH_FOR.as_millis() as u64
    }

    /// For `PgPoolOptions::before_acquire`: while armed, a pooled connection whose session is
    /// read-only is closed instead of handed out; the pool opens a new one, which takes the
    /// database's current default. (New connections do not pass through here.)
    pub(super) async fn keep(
        self: Arc<Self>,
        connection: &mut PgConnection,
        _meta: PoolConnectionMetadata,
    ) -> Result<bool, sqlx::Error> {
        if !self.armed() {
            return Ok(true);
        }
        let read_only: bool = sqlx::query_scalar(READ_ONLY_QUERY)
            .fetch_one(connection)
            .await?;
        Ok(!read_only)
    }
}
