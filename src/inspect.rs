//! What an operator reads and does to stored work, in one place: the CLI's `events`, `jobs`,
//! `deliveries`, `replay` and `stats` and the console's API call these, so the two can never
//! disagree about what an event "is" or what a bulk retry takes.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{
    DeliveryFilter, DeliverySummary, EventRecord, JobDetail, JobFilter, MinuteCount, OutcomeRecord,
    QueueState, Store, StoreError,
};

/// How far back the dashboard's chart (and `stats`' rates) look.
pub const RATE_WINDOW_MINUTES: i64 = 60;

/// Dead-letter groups shown by `stats` and the dashboard.
const TOP_REASONS: i64 = 10;

/// An event with everything that followed from it: its job (attempts, result), the outcome
/// handed off and each sink's delivery.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventDetail {
    /// The stored event; its body both as text (when UTF-8) and as base64 (byte-exact).
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    pub job: Option<JobDetail>,
    pub outcome: Option<OutcomeRecord>,
    pub deliveries: Vec<DeliverySummary>,
}

/// The stored event as JSON: the summary, the headers, and the body both as text (when it is
/// UTF-8) and as base64 (always, byte-exact).
pub fn event_json(event: &EventRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(event).expect("an event serialises");
    let object = value.as_object_mut().expect("an event is an object");
    object.insert(
        "body".into(),
        std::str::from_utf8(&event.body)
            .map(|t| serde_json::Value::String(t.to_owned()))
            .unwrap_or(serde_json::Value::Null),
    );
    object.insert(
        "body_base64".into(),
        serde_json::Value::String(STANDARD.encode(&event.body)),
    );
    value
}

/// Everything about the event with this `webhook-id`, or `None` when there is no such event.
pub async fn event_detail(
    store: &Store,
    webhook_id: &str,
) -> Result<Option<(EventRecord, EventDetail)>, StoreError> {
    let Some(event) = store.find_event(webhook_id).await? else {
        return Ok(None);
    };
    let job = store.job_of_event(webhook_id).await?;
    let outcome = store.outcome_of_event(webhook_id).await?;
    let of_event = DeliveryFilter {
        webhook_id: Some(webhook_id.to_owned()),
        ..DeliveryFilter::default()
    };
    let deliveries = store.list_deliveries(&of_event, 100).await?;
    let detail = EventDetail {
        event: event_json(&event),
        job,
        outcome,
        deliveries,
    };
    Ok(Some((event, detail)))
}

/// Dead letters that failed the same way.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiscardReason {
    pub reason: String,
    pub count: i64,
}

/// The queues at a glance: `gemhook stats --json`, `GET /api/v1/stats` and the dashboard.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// Jobs per state (states with none are absent).
    pub jobs: BTreeMap<QueueState, i64>,
    /// Hand-offs to the application's sinks per state (states with none are absent).
    pub deliveries: BTreeMap<QueueState, i64>,
    /// Seconds since the oldest runnable job became due (0 when none waits).
    pub backlog_age_secs: f64,
    /// Dead letters grouped by their last error, most common first.
    pub discard_reasons: Vec<DiscardReason>,
    /// Events received per minute over the last hour, by their job's state.
    pub per_minute: Vec<MinuteCount>,
    /// Events received in the last hour.
    pub received_last_hour: i64,
}

impl Stats {
    pub fn jobs_in(&self, state: QueueState) -> i64 {
        self.jobs.get(&state).copied().unwrap_or(0)
    }

    pub fn deliveries_in(&self, state: QueueState) -> i64 {
        self.deliveries.get(&state).copied().unwrap_or(0)
    }
}

pub async fn stats(store: &Store, now: DateTime<Utc>) -> Result<Stats, StoreError> {
    let queue = store.queue_stats().await?;
    let deliveries = store.delivery_counts().await?;
    let reasons = store.discard_reasons(TOP_REASONS).await?;
    let per_minute = store
        .events_per_minute(now - chrono::Duration::minutes(RATE_WINDOW_MINUTES))
        .await?;
    Ok(Stats {
        jobs: queue.by_state.into_iter().collect(),
        deliveries: deliveries.into_iter().collect(),
        backlog_age_secs: queue.backlog_age_secs,
        discard_reasons: reasons
            .into_iter()
            .map(|(reason, count)| DiscardReason { reason, count })
            .collect(),
        received_last_hour: per_minute.iter().map(|m| m.count).sum(),
        per_minute,
    })
}

/// What a bulk retry of dead letters did, or (as a dry run) would do.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct BulkRetry {
    /// Dead letters matching the filter (before the retry).
    pub matched: u64,
    /// Re-queued: 0 on a dry run.
    pub requeued: u64,
    pub dry_run: bool,
}

/// Re-queues the dead-lettered jobs matching `filter` (or counts them, on a dry run).
pub async fn retry_dead_jobs(
    store: &Store,
    filter: &JobFilter,
    dry_run: bool,
) -> Result<BulkRetry, StoreError> {
    let matched = store.count_discarded(filter).await?;
    let requeued = if dry_run {
        0
    } else {
        store.requeue_discarded_matching(filter).await?
    };
    Ok(BulkRetry {
        matched,
        requeued,
        dry_run,
    })
}

/// Re-queues every dead-lettered hand-off (or counts them, on a dry run).
pub async fn retry_dead_deliveries(store: &Store, dry_run: bool) -> Result<BulkRetry, StoreError> {
    let counts = store.delivery_counts().await?;
    let matched = counts
        .iter()
        .find(|(state, _)| *state == QueueState::Discarded)
        .map_or(0, |(_, n)| *n) as u64;
    let requeued = if dry_run {
        0
    } else {
        store.requeue_deliveries(None).await?
    };
    Ok(BulkRetry {
        matched,
        requeued,
        dry_run,
    })
}
