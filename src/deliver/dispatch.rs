//! The dispatcher: claims (outcome, sink) deliveries and sends each to its sink, with the
//! worker's retry and dead-letter rules. A sink that is down only delays its own deliveries:
//! each pair is a queue entry of its own, with its own backoff.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Outcome, SinkSet, delivery_id};
use crate::queue::QueueSettings as WorkerSettings;
use crate::queue::retry::{Decision, FailureKind, RetryPolicy};
use crate::queue::runner::{self as queue, Queue};
use crate::store::{ClaimedDelivery, Store};
use crate::telemetry::{error_chain, traces};

/// Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    store: Store,
    sinks: Arc<SinkSet>,
    settings: WorkerSettings,
}

impl Dispatcher {
    pub fn new(store: Store, sinks: Arc<SinkSet>, settings: WorkerSettings) -> Dispatcher {
        let id = format!(
            "dispatcher-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        );
        Dispatcher {
            inner: Arc::new(Inner {
                id,
                store,
                sinks,
                settings,
            }),
        }
    }

    pub async fn run(&self, shutdown: CancellationToken) {
        queue::run(self.clone(), &self.inner.settings, shutdown).await;
    }

    /// Sends every delivery runnable now, once; returns how many attempts ran (for tests).
    pub async fn run_until_idle(&self) -> usize {
        queue::run_until_idle(self, self.inner.settings.concurrency).await
    }

    /// The outgoing `webhook-id` / `Nats-Msg-Id`: stable for every retry of this delivery, and
    /// new when a replay rewrites the outcome (so the application sees the new outcome).
    pub fn delivery_id(delivery: &ClaimedDelivery) -> String {
        Self::outgoing_id(&delivery.webhook_id, delivery.revision, &delivery.sink)
    }

    /// [`Self::delivery_id`] from its parts (for `gemhook deliveries show`).
    pub fn outgoing_id(webhook_id: &str, revision: i32, sink: &str) -> String {
        if revision <= 1 {
            delivery_id(webhook_id, sink)
        } else {
            let key = format!("{webhook_id}#{revision}");
            delivery_id(&key, sink)
        }
    }

    async fn send(&self, delivery: &ClaimedDelivery) -> Result<(), (String, FailureKind)> {
        let Some(sink) = self.inner.sinks.get(&delivery.sink) else {
            return Err((
                format!("sink {:?} is no longer configured", delivery.sink),
                FailureKind::Permanent,
            ));
        };
        // A rescue dead-letters by the largest policy of all sinks (see `rescue`), and a policy
        // may have been lowered since: an attempt past this sink's own last one is not made.
        if delivery.attempt > sink.retry().max_attempts {
            return Err((
                format!(
                    "out of attempts: attempt {} is past the sink's max_attempts ({})",
                    delivery.attempt,
                    sink.retry().max_attempts
                ),
                FailureKind::Permanent,
            ));
        }
        let outcome: Outcome = serde_json::from_value(delivery.outcome.clone()).map_err(|e| {
            (
                format!("the stored outcome is unreadable: {e}"),
                FailureKind::Permanent,
            )
        })?;
        sink.send(&Self::delivery_id(delivery), &outcome)
            .await
            .map_err(|error| {
                let kind = if error.is_retryable() {
                    FailureKind::Transient {
                        retry_after: error.retry_after(),
                    }
                } else {
                    FailureKind::Permanent
                };
                (error_chain(&error), kind)
            })
    }
}

impl Dispatcher {
    /// Decides what a finished attempt means (done, retry, dead letter) and records it.
    async fn finish(&self, delivery: &ClaimedDelivery, sent: Result<(), (String, FailureKind)>) {
        let policy = self
            .inner
            .sinks
            .get(&delivery.sink)
            .map_or_else(RetryPolicy::sink_default, |sink| sink.retry().clone());
        let finish = match &sent {
            Ok(()) => {
                tracing::info!("outcome delivered");
                Ok(())
            }
            Err((error, kind)) => {
                match policy.decide(delivery.attempt, kind, &mut rand::thread_rng()) {
                    Decision::Retry { after } => {
                        tracing::warn!(%error, retry_in_secs = after.as_secs_f64(), "delivery failed; will retry");
                        Err((error.as_str(), Some(after)))
                    }
                    Decision::Discard => {
                        tracing::error!(%error, "delivery discarded");
                        Err((error.as_str(), None))
                    }
                }
            }
        };
        self.record(delivery, finish).await;
    }

    /// Writes the attempt's end, guarded by (id, attempt, state).
    async fn record(
        &self,
        delivery: &ClaimedDelivery,
        finish: Result<(), (&str, Option<std::time::Duration>)>,
    ) {
        match self.inner.store.finish_delivery(delivery, finish).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("delivery was no longer ours to finish"),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "recording the delivery failed")
            }
        }
    }
}

impl Queue for Dispatcher {
    type Item = ClaimedDelivery;

    fn name(&self) -> &'static str {
        "dispatcher"
    }

    /// An expired lease on its last attempt is dead-lettered by the largest `max_attempts` of
    /// any sink; a delivery of a sink with fewer is dead-lettered when next claimed (`send`).
    async fn rescue(&self) {
        let max = self
            .inner
            .sinks
            .iter()
            .map(|sink| sink.retry().max_attempts)
            .max()
            .unwrap_or(RetryPolicy::sink_default().max_attempts);
        if let Err(error) = self.inner.store.rescue_expired_deliveries(max).await {
            tracing::warn!(error = %error_chain(&error), "rescuing deliveries failed");
        }
    }

    async fn claim(&self, limit: usize) -> Vec<ClaimedDelivery> {
        let inner = &self.inner;
        match inner
            .store
            .claim_deliveries(&inner.id, inner.settings.lease, limit as i64)
            .await
        {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "claiming deliveries failed");
                Vec::new()
            }
        }
    }

    /// A send is bounded by its sink's timeout, which is below the lease, so it needs no
    /// heartbeat. On a hard stop the attempt is abandoned and recorded as a retry due at once,
    /// so another process sends it without waiting for the lease (sinks are idempotent per
    /// delivery id).
    async fn execute(&self, delivery: &ClaimedDelivery, hard_stop: CancellationToken) {
        let span = tracing::info_span!(
            "delivery_attempt",
            delivery = delivery.id,
            sink = %delivery.sink,
            webhook_id = %delivery.webhook_id,
            attempt = delivery.attempt,
        );
        // In the delivery's trace too; the HTTP sink sends this span's `traceparent`.
        traces::follow_stored(&span, delivery.trace_context.as_deref());
        async {
            let sent = tokio::select! {
                sent = self.send(delivery) => sent,
                () = hard_stop.cancelled() => {
                    let finish = Err(("interrupted by shutdown", Some(std::time::Duration::ZERO)));
                    tracing::info!("delivery attempt interrupted by shutdown; due again at once");
                    self.record(delivery, finish).await;
                    return;
                }
            };
            self.finish(delivery, sent).await;
        }
        .instrument(span)
        .await
    }

    async fn after_panic(&self, delivery: &ClaimedDelivery, panic: String) {
        tracing::error!(
            delivery = delivery.id,
            sink = %delivery.sink,
            webhook_id = %delivery.webhook_id,
            attempt = delivery.attempt,
            error = %panic,
            "delivery attempt panicked"
        );
        let kind = FailureKind::Transient { retry_after: None };
        self.finish(delivery, Err((panic, kind))).await;
    }

    fn wakeups(&self) -> Arc<Notify> {
        self.inner.store.delivery_wakeups()
    }
}
