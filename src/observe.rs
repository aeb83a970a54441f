//! Metrics: the Prometheus recorder and one small function per thing we count, so call sites
//! read as sentences and metric names live in one place.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `gemhook_deliveries_total` | counter | `outcome`: accepted, duplicate, invalid_signature, stale, bad_request, too_large, unavailable |
//! | `gemhook_ack_duration_seconds` | histogram | `outcome` |
//! | `gemhook_verified_total` | counter | `scheme`: v1, v1a, jwt |
//! | `gemhook_jobs` | gauge | `state` (read from the database at each scrape) |
//! | `gemhook_backlog_age_seconds` | gauge | age of the oldest runnable job (0 when none) |
//! | `gemhook_job_duration_seconds` | histogram | `result`: completed, retry, discarded |
//! | `gemhook_job_attempts_total` | counter | `result` |
//! | `gemhook_jobs_discarded_total` | counter | `reason`: exhausted, not_found, permanent, not_followable |
//! | `gemhook_download_bytes_total` | counter | |
//! | `gemhook_group_commit_rows` | histogram | deliveries per group-commit batch |
//! | `gemhook_group_commits_total` | counter | transactions the ack path's writers committed |
//! | `gemhook_jwks_fetches_total` | counter | `result`: ok, error |
//! | `gemhook_jwks_age_seconds` | gauge | age of the cached key set (at each scrape) |
//! | `gemhook_gemini_webhook_state` | gauge | `id`, `state`: 1 for each webhook's current state, 0 for the others |

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds: the ack path lives in the sub-millisecond to tens-of-milliseconds range.
const ACK_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Seconds: a job is a metadata fetch (tens of ms) or a download (minutes).
const JOB_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Deliveries per group-commit batch: powers of two up to the largest `group_commit_max_batch`
/// one would configure.
const BATCH_ROW_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Installs the process-wide recorder once and returns the handle that renders it. Later calls
/// (several applications in one test process) share the first recorder.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("gemhook_ack_duration_seconds".into()),
                    ACK_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("gemhook_job_duration_seconds".into()),
                        JOB_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("gemhook_group_commit_rows".into()),
                        BATCH_ROW_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding application's):
            // then ours stays unused and /metrics shows nothing, which is that application's
            // choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The outcome label of a delivery, from the reason code of its answer.
pub fn delivery_outcome(code: &str) -> &'static str {
    match code {
        "accepted" => "accepted",
        "duplicate" => "duplicate",
        "invalid_signature" => "invalid_signature",
        "timestamp_too_old" | "timestamp_too_new" => "stale",
        "payload_too_large" => "too_large",
        "unavailable" => "unavailable",
        _ => "bad_request",
    }
}

pub fn delivery(code: &str, elapsed: Duration) {
    let outcome = delivery_outcome(code);
    metrics::counter!("gemhook_deliveries_total", "outcome" => outcome).increment(1);
    metrics::histogram!("gemhook_ack_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub fn verified(scheme: &'static str) {
    metrics::counter!("gemhook_verified_total", "scheme" => scheme).increment(1);
}

/// One finished attempt: `result` is completed, retry or discarded.
pub fn job_attempt(result: &'static str, elapsed: Duration) {
    metrics::counter!("gemhook_job_attempts_total", "result" => result).increment(1);
    metrics::histogram!("gemhook_job_duration_seconds", "result" => result)
        .record(elapsed.as_secs_f64());
}

pub fn job_discarded(reason: &'static str) {
    metrics::counter!("gemhook_jobs_discarded_total", "reason" => reason).increment(1);
}

pub fn downloaded(bytes: u64) {
    metrics::counter!("gemhook_download_bytes_total").increment(bytes);
}

/// One batch of the ack path's group commit: how many deliveries it held and how many
/// transactions it took (more than one when a refused row split it, none when it failed).
pub fn group_commit(rows: usize, commits: u64) {
    metrics::histogram!("gemhook_group_commit_rows").record(rows as f64);
    metrics::counter!("gemhook_group_commits_total").increment(commits);
}

pub fn jwks_fetch(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("gemhook_jwks_fetches_total", "result" => result).increment(1);
}

/// Gauges read at scrape time: one `gemhook_jobs` series per state, 0 included, so a state
/// that empties reads 0 instead of keeping its last value.
pub fn queue_gauges(by_state: &[(&'static str, i64)], backlog_age_secs: f64) {
    for &(state, count) in by_state {
        metrics::gauge!("gemhook_jobs", "state" => state).set(count as f64);
    }
    metrics::gauge!("gemhook_backlog_age_seconds").set(backlog_age_secs);
}

pub fn jwks_age(age_secs: Option<u64>) {
    if let Some(age) = age_secs {
        metrics::gauge!("gemhook_jwks_age_seconds").set(age as f64);
    }
}

/// A Gemini webhook's state as the watcher last read it: 1 for `state`, 0 for every other
/// documented state (`None`: the webhook is gone, all 0), so an alert can match
/// `{state="disabled_due_to_failed_deliveries"} == 1`.
pub fn gemini_webhook_state(id: &str, state: Option<&str>, documented: &[&'static str]) {
    for &known in documented {
        let value = if Some(known) == state { 1.0 } else { 0.0 };
        metrics::gauge!("gemhook_gemini_webhook_state", "id" => id.to_owned(), "state" => known)
            .set(value);
    }
    if let Some(other) = state.filter(|s| !documented.contains(s)) {
        metrics::gauge!("gemhook_gemini_webhook_state", "id" => id.to_owned(), "state" => other.to_owned())
            .set(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_fold_into_the_documented_outcomes() {
        assert_eq!(delivery_outcome("timestamp_too_new"), "stale");
        assert_eq!(delivery_outcome("missing_header"), "bad_request");
        assert_eq!(delivery_outcome("invalid_header"), "bad_request");
        assert_eq!(delivery_outcome("payload_too_large"), "too_large");
    }
}
