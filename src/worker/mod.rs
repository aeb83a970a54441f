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

pub mod decide;
mod follow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use decide::{Decision, FailureKind, decide};
pub use follow::{Failure, Follower};

use crate::observe;
use crate::store::{ClaimedJob, Store};
use crate::telemetry::error_chain;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs processed at once.
    pub concurrency: usize,
    /// Fallback poll when no wake-up arrives.
    pub poll_interval: Duration,
    /// How long a claim holds a job without a heartbeat; heartbeats come every third of it.
    pub lease: Duration,
    /// Attempts before a transient failure is dead-lettered.
    pub max_attempts: i32,
    /// On shutdown, how long running jobs may take before they are released.
    pub shutdown_grace: Duration,
}

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
}

impl Worker {
    pub fn new(store: Store, follower: Follower, settings: WorkerSettings) -> Worker {
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
            }),
        }
    }

    /// The id written into `jobs.locked_by`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the module docs.
    pub async fn run(&self, shutdown: CancellationToken) {
        let settings = &self.inner.settings;
        let store = &self.inner.store;
        let wakeups = store.job_wakeups();
        let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let hard_stop = CancellationToken::new();
        let mut running = JoinSet::new();
        // The rescuer's horizon is the lease itself (heartbeats come every lease/3), so a live
        // job is never rescued; checking once per poll is plenty.
        let rescue_every = settings.poll_interval.max(Duration::from_secs(1));
        let mut last_rescue: Option<Instant> = None;
        tracing::info!(worker = %self.id(), concurrency = settings.concurrency, "worker started");

        while !shutdown.is_cancelled() {
            if last_rescue.is_none_or(|at| at.elapsed() >= rescue_every) {
                self.rescue().await;
                last_rescue = Some(Instant::now());
            }
            let free = slots.available_permits();
            let mut more_waiting = false;
            if free > 0 {
                match store
                    .claim_jobs(self.id(), settings.lease, free as i64)
                    .await
                {
                    Ok(jobs) => {
                        more_waiting = jobs.len() == free;
                        for job in jobs {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                break; // cannot happen: we claimed no more than were free
                            };
                            let worker = self.clone();
                            let hard_stop = hard_stop.clone();
                            running.spawn(async move {
                                worker.execute(job, hard_stop).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "claiming jobs failed");
                    }
                }
            }
            if more_waiting && slots.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wakeups.notified() => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }

        tracing::info!(running = running.len(), "worker stopping: no new claims");
        let drained = tokio::time::timeout(settings.shutdown_grace, drain(&mut running)).await;
        if drained.is_err() {
            tracing::warn!(
                running = running.len(),
                "grace period over: releasing running jobs"
            );
            hard_stop.cancel();
            drain(&mut running).await;
        }
        tracing::info!("worker stopped");
    }

    /// Claims and processes jobs until none is runnable; returns how many were processed.
    /// The single step tests drive (no background loop, no sleeps).
    pub async fn run_until_idle(&self) -> usize {
        let mut processed = 0;
        loop {
            self.rescue().await;
            let settings = &self.inner.settings;
            let jobs = match self
                .inner
                .store
                .claim_jobs(
                    self.id(),
                    settings.lease,
                    settings.concurrency.max(1) as i64,
                )
                .await
            {
                Ok(jobs) => jobs,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "claiming jobs failed");
                    return processed;
                }
            };
            if jobs.is_empty() {
                return processed;
            }
            processed += jobs.len();
            let never = CancellationToken::new();
            futures::future::join_all(jobs.into_iter().map(|job| self.execute(job, never.clone())))
                .await;
        }
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
    async fn execute(&self, job: ClaimedJob, hard_stop: CancellationToken) {
        let span = tracing::info_span!(
            "job",
            job_id = job.id.0,
            webhook_id = %job.webhook_id,
            r#type = job.event_type.as_deref().unwrap_or("-"),
            attempt = job.attempt,
        );
        async {
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.inner.follower.follow(&job) => outcome,
                () = self.keep_lease(&job) => {
                    tracing::warn!("lease lost to another worker: abandoning this attempt");
                    return;
                }
                () = hard_stop.cancelled() => {
                    match self.inner.store.release_if_running(&job).await {
                        Ok(_) => tracing::info!("released for another worker (shutdown)"),
                        Err(error) => tracing::warn!(error = %error_chain(&error), "releasing failed; the lease will expire"),
                    }
                    return;
                }
            };
            self.finish(&job, outcome, started).await;
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
        outcome: Result<crate::store::JobResult, Failure>,
        started: Instant,
    ) {
        let store = &self.inner.store;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let written = match outcome {
            Ok(result) => {
                let written = store.complete_if_running(job, &result).await;
                observe::job_attempt("completed", started.elapsed());
                let reused = result.summary.get("reused").is_some();
                if let (Some(bytes), false) = (result.size_bytes, reused) {
                    observe::downloaded(bytes.max(0) as u64);
                }
                tracing::info!(outcome = result.outcome, elapsed_ms, "job completed");
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
                        store
                            .discard_if_running(job, &failure.message, failure.result.as_deref())
                            .await
                    }
                }
            }
        };
        match written {
            Ok(true) => {}
            Ok(false) => tracing::warn!("job was no longer ours to finish (lease expired)"),
            // The lease will expire and the job will be rescued and run again.
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "recording the job's outcome failed")
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

async fn drain(running: &mut JoinSet<()>) {
    while running.join_next().await.is_some() {}
}
