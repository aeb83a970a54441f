//! The worker: claim → follow the pointer (no transaction open) → finish if still running.
//!
//! - Jobs are claimed with `FOR UPDATE SKIP LOCKED` and a lease; a heartbeat extends the lease
//!   while a long download runs, and a job whose lease expired (its worker died) is rescued and
//!   claimed again. Several workers, in one process or many, never run one job at once.
//! - Woken by the receiver (in-process) and by `LISTEN/NOTIFY` (other processes), with a
//!   fallback poll.
//! - A failure is retried with backoff or dead-lettered ([`decide`]); every attempt's error is
//!   kept on the job.
//! - On shutdown: stop claiming, let running jobs finish within the grace period, then release
//!   the rest so another worker takes them at once.

mod follow;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::queue::retry::{Decision, FailureKind, decide};
pub use follow::{Failure, Follower};

use chrono::Utc;
use serde_json::Value;

use crate::deliver::{self, Finished, OutcomeState, SinkSet};
use crate::gemini::Plan;
use crate::observe;
use crate::queue::runner as queue;
use crate::store::{ClaimedJob, Handoff, JobResult, Store};
use crate::telemetry::{error_chain, traces};

/// How the worker runs: the queue runner's settings.
pub type WorkerSettings = crate::queue::QueueSettings;

/// A worker. Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    store: Store,
    follower: Follower,
    settings: WorkerSettings,
    /// Where finished jobs' outcomes go; empty when no sink is configured.
    sinks: Arc<SinkSet>,
}

impl Worker {
    pub fn new(
        store: Store,
        follower: Follower,
        settings: WorkerSettings,
        sinks: Arc<SinkSet>,
    ) -> Worker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gemhook".to_owned());
        let id = format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        Worker {
            inner: Arc::new(Inner {
                id,
                store,
                follower,
                settings,
                sinks,
            }),
        }
    }

    /// The id written into `jobs.locked_by`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the module docs.
    pub async fn run(&self, shutdown: CancellationToken) {
        queue::run(self.clone(), &self.inner.settings, shutdown).await;
    }

    /// Claims every runnable job, then runs them; returns how many attempts ran. The single
    /// step tests drive (no background loop, no sleeps).
    pub async fn run_until_idle(&self) -> usize {
        queue::run_until_idle(self, self.inner.settings.concurrency).await
    }

    async fn rescue(&self) {
        match self
            .inner
            .store
            .rescue_expired_leases(self.inner.settings.max_attempts)
            .await
        {
            Ok(0) => {}
            Ok(rescued) => tracing::warn!(rescued, "rescued jobs whose lease expired"),
            Err(error) => tracing::warn!(error = %error_chain(&error), "rescuing jobs failed"),
        }
    }

    /// One attempt of one job, with its heartbeat; finishes it unless the lease was lost or a
    /// hard stop released it.
    async fn execute(&self, job: &ClaimedJob, hard_stop: CancellationToken) {
        let span = tracing::info_span!(
            "job",
            job_id = job.id.0,
            webhook_id = %job.webhook_id,
            r#type = job.event_type.as_deref().unwrap_or("-"),
            attempt = job.attempt,
        );
        // Each attempt is a child of the delivery that enqueued the job, and linked to it: one
        // trace from the delivery to the outcome, whichever process runs the attempt.
        traces::follow_stored(&span, job.trace_context.as_deref());
        async {
            let started = Instant::now();
            // Planned once: the attempt follows it, and the hand-off takes the resource and
            // user_metadata from it.
            let plan = self.inner.follower.plan(job);
            let outcome = tokio::select! {
                outcome = self.inner.follower.follow(job, &plan) => outcome,
                () = self.keep_lease(job) => {
                    tracing::warn!("lease lost to another worker: abandoning this attempt");
                    return;
                }
                () = hard_stop.cancelled() => {
                    match self.inner.store.release_if_running(job).await {
                        Ok(_) => tracing::info!("released for another worker (shutdown)"),
                        Err(error) => tracing::warn!(error = %error_chain(&error), "releasing failed; the lease will expire"),
                    }
                    return;
                }
            };
            self.finish(job, outcome, started, Some(&plan)).await;
        }
        .instrument(span)
        .await
    }

    /// Extends the lease every third of it; returns only when the job is no longer ours.
    async fn keep_lease(&self, job: &ClaimedJob) {
        let lease = self.inner.settings.lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.inner.store.heartbeat(job, self.id(), lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    // The lease still runs; the next beat may get through.
                    tracing::warn!(error = %error_chain(&error), "heartbeat failed");
                }
            }
        }
    }

    async fn finish(
        &self,
        job: &ClaimedJob,
        outcome: Result<(JobResult, Option<Value>), Failure>,
        started: Instant,
        plan: Option<&Plan>,
    ) {
        let store = &self.inner.store;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let written = match outcome {
            Ok((result, inline)) => {
                let handoff = self.handoff(
                    job,
                    OutcomeState::Completed,
                    Some(&result),
                    None,
                    inline,
                    plan,
                );
                let written = store
                    .complete_if_running(job, &result, handoff.as_ref())
                    .await;
                observe::job_attempt("completed", started.elapsed());
                let reused = result.summary.get("reused").is_some();
                if let (Some(bytes), false) = (result.size_bytes, reused) {
                    observe::downloaded(bytes.max(0) as u64);
                }
                // Logged once the guarded finish says whether it counted: a job rescued and
                // finished elsewhere must not be logged as completed twice.
                if matches!(written, Ok(true)) {
                    tracing::info!(outcome = result.outcome, elapsed_ms, "job completed");
                }
                written
            }
            Err(failure) => {
                let decision = decide(
                    job.attempt,
                    self.inner.settings.max_attempts,
                    &failure.kind,
                    &mut rand::thread_rng(),
                );
                match decision {
                    Decision::Retry { after } => {
                        observe::job_attempt("retry", started.elapsed());
                        tracing::warn!(error = %failure.message, retry_in_secs = after.as_secs_f64(), elapsed_ms, "attempt failed; will retry");
                        store.retry_if_running(job, &failure.message, after).await
                    }
                    Decision::Discard => {
                        observe::job_attempt("discarded", started.elapsed());
                        observe::job_discarded(discard_reason(&failure));
                        tracing::error!(error = %failure.message, elapsed_ms, "job discarded");
                        let result = failure.result.as_deref();
                        let handoff = self.handoff(
                            job,
                            OutcomeState::Discarded,
                            result,
                            Some(&failure.message),
                            None,
                            plan,
                        );
                        store
                            .discard_if_running(job, &failure.message, result, handoff.as_ref())
                            .await
                    }
                }
            }
        };
        match written {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                elapsed_ms,
                "attempt ended but the job was no longer ours (its lease expired and it was rescued): this attempt's outcome was dropped"
            ),
            // The lease will expire and the job will be rescued and run again.
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "recording the job's outcome failed")
            }
        }
    }
}

impl Worker {
    /// The outcome for the application and the sinks it goes to; `None` with no sinks.
    fn handoff(
        &self,
        job: &ClaimedJob,
        state: OutcomeState,
        result: Option<&JobResult>,
        last_error: Option<&str>,
        inline: Option<Value>,
        plan: Option<&Plan>,
    ) -> Option<Handoff> {
        let sinks = &self.inner.sinks;
        if sinks.is_empty() {
            return None;
        }
        let outcome = deliver::build(Finished {
            webhook_id: &job.webhook_id,
            event_type: job.event_type.as_deref(),
            state,
            result,
            plan,
            last_error,
            inline,
            inline_max_bytes: sinks.max_inline_bytes(),
            finished_at: Utc::now(),
        });
        let names = sinks
            .matching(&outcome)
            .map(|sink| sink.name().to_owned())
            .collect();
        match serde_json::to_value(&outcome) {
            Ok(outcome) => Some(Handoff {
                outcome,
                sinks: names,
            }),
            Err(error) => {
                tracing::error!(error = %error, "the outcome could not be encoded; no hand-off");
                None
            }
        }
    }
}

/// The `reason` label of a dead letter.
fn discard_reason(failure: &Failure) -> &'static str {
    match failure.kind {
        FailureKind::Transient { .. } => "exhausted",
        FailureKind::NotFound => "not_found",
        FailureKind::Permanent if failure.result.is_some() => "not_followable",
        FailureKind::Permanent => "permanent",
    }
}

impl queue::Queue for Worker {
    type Item = ClaimedJob;

    fn name(&self) -> &'static str {
        "worker"
    }

    async fn rescue(&self) {
        Worker::rescue(self).await;
    }

    async fn claim(&self, limit: usize) -> Vec<ClaimedJob> {
        let settings = &self.inner.settings;
        match self
            .inner
            .store
            .claim_jobs(self.id(), settings.lease, limit as i64)
            .await
        {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "claiming jobs failed");
                Vec::new()
            }
        }
    }

    async fn execute(&self, job: &ClaimedJob, hard_stop: CancellationToken) {
        Worker::execute(self, job, hard_stop).await;
    }

    async fn after_panic(&self, job: &ClaimedJob, panic: String) {
        tracing::error!(
            job_id = job.id.0,
            webhook_id = %job.webhook_id,
            r#type = job.event_type.as_deref().unwrap_or("-"),
            attempt = job.attempt,
            error = %panic,
            "job attempt panicked"
        );
        let failure = Failure {
            message: panic,
            kind: FailureKind::Transient { retry_after: None },
            result: None,
        };
        // The plan again, guarded: the panic may have come from planning this very body.
        let plan =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.follower.plan(job))).ok();
        self.finish(job, Err(failure), Instant::now(), plan.as_ref())
            .await;
    }

    fn wakeups(&self) -> Arc<tokio::sync::Notify> {
        self.inner.store.job_wakeups()
    }
}
