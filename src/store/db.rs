//! The seam under the store: a pool of either database, and the few places where Postgres and
//! SQLite differ, each one fragment or codec here.
//!
//! Every statement above this module is written once, with `$n` placeholders (SQLite reads
//! `$n` as the n-th parameter too) and standard SQL; where the two databases spell something
//! differently (the time functions, JSON building, `SKIP LOCKED`, a list parameter), the
//! statement asks its [`Dialect`] for the fragment. Values cross the seam as [`Arg`]s and come
//! back as [`Row`]s, which apply the one codec that differs: timestamps are `timestamptz` in
//! Postgres and INTEGER milliseconds since the epoch in SQLite (see `sqlite.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Postgres, Row as _, Sqlite, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::StoreError;

/// SQLite's "now" in milliseconds since the epoch. SQLite keeps `'now'` fixed for the whole of
/// one statement, like Postgres' `now()` within a transaction. `julianday` (rather than
/// `unixepoch(..., 'subsec')`) keeps the schema readable by older `sqlite3` shells; SQLite's
/// clock has millisecond resolution, so the rounding is exact. The migrations' defaults repeat
/// it.
const SQLITE_NOW_MS: &str = "CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)";

/// Starts a SQLite transaction that holds the write lock from its first statement: a deferred
/// `BEGIN` would read first and could fail, without waiting, when upgrading to a write after
/// another writer committed.
pub(super) const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// Which database a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// The database's "now", as a timestamp column holds it.
    pub(super) fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "now()",
            Dialect::Sqlite => SQLITE_NOW_MS,
        }
    }

    /// "now" plus the milliseconds in parameter `param` (bound as [`Arg::Millis`]).
    pub(super) fn now_plus(self, param: &str) -> String {
        match self {
            Dialect::Postgres => format!("(now() + {param} * interval '1 millisecond')"),
            Dialect::Sqlite => format!("({SQLITE_NOW_MS} + {param})"),
        }
    }

    /// Seconds from the timestamp expression `earlier` to now, as a double.
    pub(super) fn secs_since(self, earlier: &str) -> String {
        match self {
            Dialect::Postgres => format!("extract(epoch FROM now() - {earlier})::float8"),
            Dialect::Sqlite => format!("(({SQLITE_NOW_MS} - {earlier}) / 1000.0)"),
        }
    }

    /// "now" inside a JSON value: RFC 3339 text in both.
    pub(super) fn now_in_json(self) -> &'static str {
        match self {
            Dialect::Postgres => "now()",
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// The start of the minute of the timestamp expression `column`, as seconds since the epoch.
    pub(super) fn minute_of(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("(floor(extract(epoch FROM {column}) / 60) * 60)::int8"),
            Dialect::Sqlite => format!("(({column} / 60000) * 60)"),
        }
    }

    /// A JSON object from `'key', value, ...` pairs.
    pub(super) fn object(self, pairs: &str) -> String {
        match self {
            Dialect::Postgres => format!("jsonb_build_object({pairs})"),
            Dialect::Sqlite => format!("json_object({pairs})"),
        }
    }

    /// A JSON column as a value inside [`Dialect::object`] (SQLite keeps JSON as text, which
    /// would otherwise be embedded as a string).
    pub(super) fn json_value(self, column: &str) -> String {
        match self {
            Dialect::Postgres => column.to_owned(),
            Dialect::Sqlite => format!("json({column})"),
        }
    }

    /// A parameter bound as JSON text, stored in a JSON column (`jsonb` in Postgres, which does
    /// not take text implicitly; TEXT in SQLite).
    pub(super) fn json_param(self, param: &str) -> String {
        match self {
            Dialect::Postgres => format!("CAST({param} AS jsonb)"),
            Dialect::Sqlite => param.to_owned(),
        }
    }

    /// A timestamp column as RFC 3339 text inside [`Dialect::object`].
    pub(super) fn time_in_json(self, column: &str) -> String {
        match self {
            Dialect::Postgres => column.to_owned(),
            Dialect::Sqlite => {
                format!("strftime('%Y-%m-%dT%H:%M:%fZ', {column} / 1000.0, 'unixepoch')")
            }
        }
    }

    /// A boolean SQL expression as a JSON `true`/`false` inside [`Dialect::object`].
    pub(super) fn json_bool(self, condition: &str) -> String {
        match self {
            Dialect::Postgres => format!("({condition})"),
            Dialect::Sqlite => format!("json(CASE WHEN {condition} THEN 'true' ELSE 'false' END)"),
        }
    }

    /// The JSON array column `column` with `value` appended.
    pub(super) fn append(self, column: &str, value: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column} || jsonb_build_array({value})"),
            Dialect::Sqlite => format!("json_insert({column}, '$[#]', {value})"),
        }
    }

    /// The `error` text of the last element of the JSON array column `column`.
    pub(super) fn last_error(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("{column} -> -1 ->> 'error'"),
            Dialect::Sqlite => format!("json_extract({column}, '$[#-1].error')"),
        }
    }

    /// What a claim's row selection ends with: concurrent Postgres claimers (threads or
    /// replicas) each take different rows instead of queueing behind one another's row locks.
    /// SQLite needs nothing: its claim runs under the file's one write lock.
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        }
    }

    /// What follows `FROM {table}` in a claim: SQLite's planner, without statistics, prefers
    /// the index on `state` and sorts every runnable row to take the first few (a 20,000-job
    /// backlog made each claim a 20,000-row sort, and the burn-down quadratic); the partial
    /// index of runnable rows in schedule order answers it from its first entries. Postgres
    /// plans it well by itself.
    pub(super) fn runnable_index(self, table: &str) -> String {
        match self {
            Dialect::Postgres => String::new(),
            Dialect::Sqlite => format!("INDEXED BY {table}_runnable_idx"),
        }
    }

    /// A table of one column, `value`, from a list parameter bound as [`Arg::TextList`] or
    /// [`Arg::IntList`]: `FROM {rows}`.
    pub(super) fn list_rows(self, param: &str, element: ListOf) -> String {
        match (self, element) {
            (Dialect::Postgres, ListOf::Text) => format!("unnest({param}::text[]) AS list(value)"),
            (Dialect::Postgres, ListOf::Int) => format!("unnest({param}::int8[]) AS list(value)"),
            (Dialect::Sqlite, _) => format!("json_each({param})"),
        }
    }

    /// A statement that wakes other processes' listeners on channel `$n`, where the database
    /// has channels.
    pub(super) fn notify(self, param: &str) -> Option<String> {
        match self {
            Dialect::Postgres => Some(format!("SELECT pg_notify({param}, '')")),
            Dialect::Sqlite => None,
        }
    }
}

/// The element type of a list parameter.
#[derive(Debug, Clone, Copy)]
pub(super) enum ListOf {
    Text,
    Int,
}

/// A bound parameter, encoded for whichever database runs the statement.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Int32(i32),
    Text(&'a str),
    Bytes(&'a [u8]),
    OptText(Option<&'a str>),
    Bool(bool),
    Json(&'a serde_json::Value),
    OptTime(Option<DateTime<Utc>>),
    /// A duration for [`Dialect::now_plus`], in milliseconds (capped at a century, so that
    /// `now + interval` cannot overflow SQLite's integers and turn the column into a REAL).
    Millis(Duration),
    TextList(&'a [String]),
    IntList(&'a [i64]),
}

fn millis(duration: Duration) -> i64 {
    const CENTURY_MS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;
    i64::try_from(duration.as_millis()).map_or(CENTURY_MS, |ms| ms.min(CENTURY_MS))
}

fn bind_postgres<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    args: &'q [Arg<'q>],
) -> Query<'q, Postgres, PgArguments> {
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::OptInt(v) => query.bind(v),
            Arg::Int32(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Json(v) => query.bind(v),
            Arg::OptTime(v) => query.bind(v),
            Arg::Millis(v) => query.bind(millis(v)),
            Arg::TextList(v) => query.bind(v),
            Arg::IntList(v) => query.bind(v),
        };
    }
    query
}

fn bind_sqlite<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments<'q>>,
    args: &'q [Arg<'q>],
) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::OptInt(v) => query.bind(v),
            Arg::Int32(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
            Arg::OptText(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Json(v) => query.bind(v),
            Arg::OptTime(v) => query.bind(v.map(|t| t.timestamp_millis())),
            Arg::Millis(v) => query.bind(millis(v)),
            Arg::TextList(v) => query.bind(serde_json::Value::from(v).to_string()),
            Arg::IntList(v) => query.bind(serde_json::Value::from(v).to_string()),
        };
    }
    query
}

/// A row from either database.
pub(super) enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

/// A value both databases decode the same way (integers, text, bytes, booleans, JSON).
pub(super) trait Column:
    for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
{
}

impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
{
}

impl Row {
    pub(super) fn get<T: Column>(&self, column: &str) -> Result<T, StoreError> {
        Ok(match self {
            Row::Postgres(row) => row.try_get(column)?,
            Row::Sqlite(row) => row.try_get(column)?,
        })
    }

    /// A timestamp column (or a JSON-free expression of one).
    pub(super) fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError> {
        match self {
            Row::Postgres(row) => Ok(row.try_get(column)?),
            Row::Sqlite(row) => from_millis(column, row.try_get(column)?),
        }
    }

    pub(super) fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self {
            Row::Postgres(row) => Ok(row.try_get(column)?),
            Row::Sqlite(row) => row
                .try_get::<Option<i64>, _>(column)?
                .map(|ms| from_millis(column, ms))
                .transpose(),
        }
    }
}

fn from_millis(column: &str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| {
        StoreError::Database(sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: format!("{ms} ms since the epoch is out of range").into(),
        })
    })
}

/// A pool of either database.
#[derive(Debug, Clone)]
pub(super) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool, WriteGate),
}

/// How long a SQLite writer waits for the file's write lock: in the gate, then in SQLite's
/// busy handler (`sqlite.rs` sets the same). Write transactions last milliseconds; this only
/// bites when the file is wedged.
pub(super) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite lets one connection write at a time; a second writer waits in SQLite's busy handler,
/// which sleeps (1, 2, 5, 10 … 100 ms) and polls rather than queueing, so a delivery behind a
/// worker's finish could wait tens of milliseconds for a lock free after one. Within a process
/// writers queue here instead, in order, and reach SQLite one at a time; the busy handler is
/// left for other processes on the same file. Reads (WAL) never wait for it.
#[derive(Debug, Clone)]
pub(super) struct WriteGate(Arc<Semaphore>);

impl WriteGate {
    pub(super) fn new() -> WriteGate {
        WriteGate(Arc::new(Semaphore::new(1)))
    }

    /// Waits for this process's turn to write, as long as SQLite's busy timeout would have.
    async fn enter(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        match tokio::time::timeout(SQLITE_BUSY_TIMEOUT, self.0.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would be a bug, reported as busy.
            Ok(Err(_)) | Err(_) => Err(StoreError::Deadline(SQLITE_BUSY_TIMEOUT)),
        }
    }

    /// A turn for a statement run outside a transaction, unless it only reads (it starts with
    /// `SELECT`; anything else, `WITH` included, is taken to write).
    async fn enter_unless_read(
        &self,
        sql: &str,
    ) -> Result<Option<OwnedSemaphorePermit>, StoreError> {
        let only_reads = sql
            .trim_start()
            .get(..6)
            .is_some_and(|word| word.eq_ignore_ascii_case("SELECT"));
        if only_reads {
            Ok(None)
        } else {
            self.enter().await.map(Some)
        }
    }
}

/// A write transaction on either database: `BEGIN` on Postgres, `BEGIN IMMEDIATE` on SQLite,
/// holding this process's turn at the [`WriteGate`] until it ends.
pub(super) enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>, OwnedSemaphorePermit),
}

impl Db {
    pub(super) async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool, gate) => {
                let turn = gate.enter().await?;
                Tx::Sqlite(pool.begin_with(BEGIN_IMMEDIATE).await?, turn)
            }
        })
    }
}

impl Tx {
    pub(super) fn dialect(&self) -> Dialect {
        match self {
            Tx::Postgres(_) => Dialect::Postgres,
            Tx::Sqlite(..) => Dialect::Sqlite,
        }
    }

    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Postgres(tx) => tx.commit().await?,
            Tx::Sqlite(tx, _turn) => tx.commit().await?,
        }
        Ok(())
    }

    /// Ends a transaction that wrote nothing now, rather than when it is dropped.
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await?,
            Tx::Sqlite(tx, _turn) => tx.rollback().await?,
        }
        Ok(())
    }
}

/// Where a statement runs: straight on the pool (`&Db`), or inside a transaction (`&mut Tx`).
pub(super) trait Exec: Send {
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns how many rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    fn fetch_all(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;

    fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> impl Future<Output = Result<Option<Row>, StoreError>> + Send;
}

impl Exec for &Db {
    fn dialect(&self) -> Dialect {
        match self {
            Db::Postgres(_) => Dialect::Postgres,
            Db::Sqlite(..) => Dialect::Sqlite,
        }
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => bind_postgres(sqlx::query(sql), args)
                .execute(pool)
                .await?
                .rows_affected(),
            Db::Sqlite(pool, gate) => {
                let _turn = gate.enter_unless_read(sql).await?;
                bind_sqlite(sqlx::query(sql), args)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
        })
    }

    async fn fetch_all(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => bind_postgres(sqlx::query(sql), args)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
            Db::Sqlite(pool, gate) => {
                let _turn = gate.enter_unless_read(sql).await?;
                bind_sqlite(sqlx::query(sql), args)
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(Row::Sqlite)
                    .collect()
            }
        })
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => bind_postgres(sqlx::query(sql), args)
                .fetch_optional(pool)
                .await?
                .map(Row::Postgres),
            Db::Sqlite(pool, gate) => {
                let _turn = gate.enter_unless_read(sql).await?;
                bind_sqlite(sqlx::query(sql), args)
                    .fetch_optional(pool)
                    .await?
                    .map(Row::Sqlite)
            }
        })
    }
}

impl Exec for &mut Tx {
    fn dialect(&self) -> Dialect {
        Tx::dialect(self)
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => bind_postgres(sqlx::query(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Sqlite(tx, _) => bind_sqlite(sqlx::query(sql), args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        })
    }

    async fn fetch_all(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => bind_postgres(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Postgres)
                .collect(),
            Tx::Sqlite(tx, _) => bind_sqlite(sqlx::query(sql), args)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(Row::Sqlite)
                .collect(),
        })
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => bind_postgres(sqlx::query(sql), args)
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Postgres),
            Tx::Sqlite(tx, _) => bind_sqlite(sqlx::query(sql), args)
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Sqlite),
        })
    }
}
