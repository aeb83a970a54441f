//! The webhook watcher: while `gemhook serve` runs with an API key, read the project's
//! webhooks from the WebhookService every `webhook_watch_interval_secs` and expose their
//! states (metric `gemhook_gemini_webhook_state{id, state}`, the `/readyz` body), with a
//! warning when Gemini has disabled one after failed deliveries, which is otherwise noticed
//! only when events stop arriving.
//!
//! A failed read is logged and shown (`last_error`), and the last good states are kept: it
//! never affects readiness, since a replica that cannot reach Google can still take deliveries.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::webhooks::{Webhook, WebhookService};
use crate::observe;
use crate::telemetry::error_chain;

/// The state that needs an operator: Gemini stopped delivering after repeated failures.
pub const DISABLED_BY_FAILURES: &str = "disabled_due_to_failed_deliveries";

/// One webhook as last read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WatchedWebhook {
    pub id: String,
    pub state: String,
    pub uri: Option<String>,
}

/// What `/readyz` shows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchStatus {
    /// The last read, successful or not.
    pub checked_at: Option<DateTime<Utc>>,
    /// The last successful read.
    pub ok_at: Option<DateTime<Utc>>,
    /// Why the last read failed, when it did (never the key: errors name origins only).
    pub last_error: Option<String>,
    /// The states of the last successful read.
    pub webhooks: Vec<WatchedWebhook>,
}

/// A read-only view of the watcher's status, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct WatchHandle(Arc<Mutex<WatchStatus>>);

impl WatchHandle {
    pub fn status(&self) -> WatchStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The watcher.
#[derive(Debug)]
pub struct WebhookWatch {
    service: WebhookService,
    interval: Duration,
    status: WatchHandle,
    /// Ids reported before: one that disappears has its gauges set to 0, not left at 1.
    reported: Mutex<BTreeSet<String>>,
}

impl WebhookWatch {
    pub fn new(service: WebhookService, interval: Duration) -> WebhookWatch {
        WebhookWatch {
            service,
            interval,
            status: WatchHandle::default(),
            reported: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn handle(&self) -> WatchHandle {
        self.status.clone()
    }

    /// Reads every webhook once and publishes what it found.
    pub async fn check_once(&self) {
        let now = Utc::now();
        match self.service.list().await {
            Ok(webhooks) => {
                let watched: Vec<WatchedWebhook> =
                    webhooks.iter().filter_map(|w| watched(&w.value)).collect();
                self.publish(&watched);
                let mut status = self.status.0.lock().unwrap_or_else(|e| e.into_inner());
                status.checked_at = Some(now);
                status.ok_at = Some(now);
                status.last_error = None;
                status.webhooks = watched;
            }
            Err(error) => {
                let error = error_chain(&error);
                tracing::warn!(%error, "reading the Gemini webhooks' state failed; keeping the last one read");
                let mut status = self.status.0.lock().unwrap_or_else(|e| e.into_inner());
                status.checked_at = Some(now);
                status.last_error = Some(error);
            }
        }
    }

    fn publish(&self, watched: &[WatchedWebhook]) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        let current: BTreeSet<String> = watched.iter().map(|w| w.id.clone()).collect();
        for gone in reported.difference(&current) {
            observe::gemini_webhook_state(gone, None, &super::webhooks::STATES);
        }
        for webhook in watched {
            observe::gemini_webhook_state(
                &webhook.id,
                Some(&webhook.state),
                &super::webhooks::STATES,
            );
            if webhook.state == DISABLED_BY_FAILURES {
                tracing::warn!(
                    webhook = %webhook.id,
                    uri = webhook.uri.as_deref().unwrap_or_default(),
                    "Gemini disabled this webhook after repeated failed deliveries, so no events are arriving: fix the cause (is this URL reachable and answering 2xx?), then run `gemhook webhooks update {} --enable`",
                    webhook.id
                );
            }
        }
        *reported = current;
    }

    /// Checks at once, then every interval, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        // A slow read must not be followed by a burst of catch-up reads.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.check_once().await,
            }
        }
    }
}

fn watched(webhook: &Webhook) -> Option<WatchedWebhook> {
    Some(WatchedWebhook {
        id: webhook.id()?.to_owned(),
        state: webhook.state().unwrap_or_else(|| "unknown".to_owned()),
        uri: webhook.uri.clone(),
    })
}
