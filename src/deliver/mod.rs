//! Handing results to the user's application: one [`Outcome`] per finished event, sent to
//! every configured [`Sink`] whose filter matches.
//!
//! - [`outcome`] (pure): the JSON the application receives, and the stable
//!   [`delivery_id`] of each (outcome, sink) pair.
//! - [`sinks`] (pure): the `[[sinks]]` configuration, filters on event type and
//!   `user_metadata`, the NATS subject template, validation.
//! - [`http`]: POST, signed with Standard Webhooks `v1` and gemhook's own `whsec_` secret.
//! - [`nats`]: publish to JetStream with `Nats-Msg-Id`, and wait for the ack.
//! - [`handler`]: the user's own Rust code, embedded.
//!
//! What is not here: the durable queue of (outcome, sink) deliveries, its retries and dead
//! letters. A sink only makes one attempt and says, through [`SinkError::is_retryable`] and
//! [`SinkError::retry_after`], whether and when another attempt can help; every sink is
//! idempotent per delivery id, so the queue may retry after any failure, including one where
//! the attempt in fact got through.

pub mod dispatch;
pub mod handler;
pub mod http;
pub mod nats;
pub mod outcome;
pub mod sinks;

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::queue::retry::RetryPolicy;
use futures::FutureExt;
use reqwest::StatusCode;
use url::Url;

pub use dispatch::Dispatcher;
pub use handler::{BoxFuture, Handler, HandlerError};
pub use http::HttpSink;
pub use nats::{NatsSink, Published};
pub use outcome::{Finished, Outcome, OutcomeState, build, delivery_id};
pub use sinks::{
    Filter, SinkConfig, SinkConfigError, SubjectTemplate, check_timeouts_within, validate,
};

/// One failed attempt to hand an outcome to a sink. Never contains a secret, a URL's path,
/// query or credentials, or the outcome itself.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("the outcome could not be encoded as JSON")]
    Encode(#[source] serde_json::Error),
    #[error("{endpoint} answered {status}{}", detail_suffix(.detail))]
    Status {
        endpoint: String,
        status: StatusCode,
        retry_after: Option<Duration>,
        /// The start of the answer's body, on one line.
        detail: String,
    },
    #[error("{endpoint} did not answer in time")]
    Timeout {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not connect to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the request to {endpoint} failed")]
    Request {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not connect to NATS at {endpoint}")]
    NatsConnect {
        endpoint: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("the event type {event_type:?} does not make a valid NATS subject")]
    InvalidSubject { event_type: String },
    #[error("no JetStream stream captures the subject {subject}")]
    NoStream { subject: String },
    #[error("JetStream did not acknowledge the message on {subject} in time")]
    AckTimeout { subject: String },
    #[error("publishing to {subject} failed")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("creating the JetStream stream {stream} failed")]
    CreateStream {
        stream: String,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("the handler asked for a retry: {reason}")]
    HandlerRetry {
        reason: String,
        after: Option<Duration>,
    },
    #[error("the handler discarded the outcome: {reason}")]
    HandlerDiscard { reason: String },
    #[error("the handler panicked")]
    HandlerPanicked,
    #[error("the handler did not finish within {}s (timeout_secs)", .after.as_secs())]
    HandlerTimeout { after: Duration },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl SinkError {
    /// Whether another attempt can succeed: timeouts, refused or broken connections, 5xx, 408
    /// and 429, a missing stream (it may be created), lost acks, a handler's retry or panic.
    /// Other 4xx (including 410 Gone), redirects, unencodable outcomes, invalid subjects and a
    /// handler's discard will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Status { status, .. } => crate::outbound::is_retryable(*status),
            SinkError::Timeout { .. }
            | SinkError::Connect { .. }
            | SinkError::Request { .. }
            | SinkError::NatsConnect { .. }
            | SinkError::NoStream { .. }
            | SinkError::AckTimeout { .. }
            | SinkError::Publish { .. }
            | SinkError::CreateStream { .. }
            | SinkError::HandlerRetry { .. }
            // A panic may come from a passing condition (or a fixed bug after a restart); the
            // attempt limit still ends a deterministic one.
            | SinkError::HandlerPanicked
            | SinkError::HandlerTimeout { .. } => true,
            SinkError::Encode(_)
            | SinkError::InvalidSubject { .. }
            | SinkError::HandlerDiscard { .. } => false,
        }
    }

    /// When the sink asked to be tried again: an HTTP `Retry-After` on a 429 or 5xx, or a
    /// handler's own delay.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Status { retry_after, .. } => *retry_after,
            SinkError::HandlerRetry { after, .. } => *after,
            _ => None,
        }
    }
}

/// A configured sink: a name, a filter, and where outcomes go.
pub struct Sink {
    name: String,
    filter: Filter,
    target: Target,
    /// How its failed deliveries are retried.
    retry: RetryPolicy,
}

/// Where a sink sends outcomes.
pub enum Target {
    Http(HttpSink),
    Nats(NatsSink),
    Handler {
        handler: Arc<dyn Handler>,
        /// Larger inline interaction JSON is left out of what the handler sees.
        inline_max_bytes: usize,
        /// One call longer than this is abandoned and counts as a retryable failure.
        timeout: Duration,
    },
}

impl Sink {
    pub fn new(name: impl Into<String>, filter: Filter, target: Target) -> Sink {
        Sink {
            name: name.into(),
            filter,
            target,
            retry: RetryPolicy::sink_default(),
        }
    }

    /// The same sink with its own retry policy.
    pub fn with_retry(self, retry: RetryPolicy) -> Sink {
        Sink { retry, ..self }
    }

    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Builds one configured sink; `handler` is the one registered under its name (only
    /// consulted for `kind = "handler"`). Does not validate: see [`sinks::validate`].
    fn from_config(
        config: &SinkConfig,
        handlers: &HashMap<String, Arc<dyn Handler>>,
    ) -> Result<Sink, SinkConfigError> {
        let target = match config {
            SinkConfig::Http(http) => Target::Http(HttpSink::from_config(http)?),
            SinkConfig::Nats(nats) => Target::Nats(NatsSink::from_config(nats)?),
            SinkConfig::Handler(entry) => Target::Handler {
                handler: handlers.get(&entry.name).cloned().ok_or_else(|| {
                    SinkConfigError::UnknownHandler {
                        name: entry.name.clone(),
                    }
                })?,
                inline_max_bytes: entry.inline_max_bytes,
                timeout: config.timeout(),
            },
        };
        Ok(Sink::new(config.name(), config.filter().clone(), target)
            .with_retry(config.retry_policy()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http`, `nats` or `handler`.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Http(_) => "http",
            Target::Nats(_) => "nats",
            Target::Handler { .. } => "handler",
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether this sink wants the outcome.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        self.filter.matches(outcome)
    }

    /// The largest inline interaction JSON this sink sends, in bytes.
    pub fn inline_max_bytes(&self) -> usize {
        match &self.target {
            Target::Http(http) => http.inline_max_bytes(),
            Target::Nats(nats) => nats.inline_max_bytes(),
            Target::Handler {
                inline_max_bytes, ..
            } => *inline_max_bytes,
        }
    }

    /// One attempt to deliver `outcome`; `delivery_id` is [`delivery_id`] of the outcome and
    /// this sink, the same on every attempt.
    pub async fn send(&self, delivery_id: &str, outcome: &Outcome) -> Result<(), SinkError> {
        match &self.target {
            Target::Http(http) => http.send(delivery_id, outcome).await,
            Target::Nats(nats) => nats.send(delivery_id, outcome).await.map(drop),
            Target::Handler {
                handler,
                inline_max_bytes,
                timeout,
            } => {
                let outcome = outcome.limit_inline(*inline_max_bytes);
                // The handler is someone else's code: a panic must become a failed attempt,
                // not a dead worker task whose delivery waits for its lease to expire; a hang
                // must end before the lease does, or the delivery would run twice at once.
                let call = AssertUnwindSafe(handler.handle(&outcome)).catch_unwind();
                match tokio::time::timeout(*timeout, call).await {
                    Err(_elapsed) => Err(SinkError::HandlerTimeout { after: *timeout }),
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(HandlerError::Retry { reason, after }))) => {
                        Err(SinkError::HandlerRetry { reason, after })
                    }
                    Ok(Ok(Err(HandlerError::Discard { reason }))) => {
                        Err(SinkError::HandlerDiscard { reason })
                    }
                    Ok(Err(_panic)) => Err(SinkError::HandlerPanicked),
                }
            }
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .field("filter", &self.filter)
            .field("target", &self.target)
            .finish()
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http(http) => http.fmt(f),
            Target::Nats(nats) => nats.fmt(f),
            Target::Handler {
                inline_max_bytes, ..
            } => f
                .debug_struct("Handler")
                .field("inline_max_bytes", inline_max_bytes)
                .finish_non_exhaustive(),
        }
    }
}

/// Every configured sink, in configuration order.
#[derive(Debug, Default)]
pub struct SinkSet {
    sinks: Vec<Sink>,
}

impl SinkSet {
    pub fn new(sinks: Vec<Sink>) -> SinkSet {
        SinkSet { sinks }
    }

    /// Validates the configuration and builds its sinks; `handlers` are the embedded handlers
    /// by name, for `kind = "handler"` sinks. Nothing is dialled: NATS connects on first use.
    pub fn from_config(
        configs: &[SinkConfig],
        handlers: HashMap<String, Arc<dyn Handler>>,
    ) -> Result<SinkSet, SinkConfigError> {
        sinks::validate(configs)?;
        let sinks = configs
            .iter()
            .map(|config| Sink::from_config(config, &handlers))
            .collect::<Result<Vec<_>, _>>()?;
        for name in handlers.keys() {
            let used = configs
                .iter()
                .any(|c| matches!(c, SinkConfig::Handler(h) if &h.name == name));
            if !used {
                // Not an error: the same binary may run with configurations that leave a
                // handler out, but it is most likely a forgotten `[[sinks]]` entry.
                tracing::warn!(handler = %name, "a handler is registered but no sink of kind \"handler\" names it");
            }
        }
        Ok(SinkSet { sinks })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Sink> {
        self.sinks.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|sink| sink.name == name)
    }

    /// The sinks that want `outcome`: one delivery each.
    pub fn matching<'a>(&'a self, outcome: &'a Outcome) -> impl Iterator<Item = &'a Sink> + 'a {
        self.sinks.iter().filter(move |sink| sink.matches(outcome))
    }

    /// The largest inline size any sink sends: interaction JSON larger than this need not even
    /// be read for [`outcome::build`]. 0 without sinks.
    pub fn max_inline_bytes(&self) -> usize {
        self.sinks
            .iter()
            .map(Sink::inline_max_bytes)
            .max()
            .unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Creates the streams that NATS sinks name (`stream = ...`) when they do not exist.
    /// Returns the sinks for which that failed: the caller logs them and carries on, since a
    /// NATS server that is down must not stop gemhook (the deliveries wait for it).
    pub async fn ensure_streams(&self) -> Vec<(&str, SinkError)> {
        let mut failed = Vec::new();
        for sink in &self.sinks {
            if let Target::Nats(nats) = &sink.target {
                if let Err(error) = nats.ensure_configured_stream().await {
                    failed.push((sink.name(), error));
                }
            }
        }
        failed
    }
}

/// `scheme://host:port` of a configured URL, for messages and `Debug`: never its user info,
/// path or query, which may carry credentials. Works for `nats://` too, which has no web origin.
pub(crate) fn display_endpoint(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}:", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::outcome::tests::sample;
    use crate::deliver::sinks::{HandlerSinkConfig, HttpSinkConfig};
    use crate::redact::Redacted;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn handler_config(name: &str, filter: Filter) -> SinkConfig {
        SinkConfig::Handler(HandlerSinkConfig {
            name: name.into(),
            inline_max_bytes: 100,
            timeout_secs: 10,
            retry: Default::default(),
            filter,
        })
    }

    fn counting() -> (Arc<AtomicUsize>, Arc<dyn Handler>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let handler: Arc<dyn Handler> = Arc::new(move |_: &Outcome| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        });
        (calls, handler)
    }

    #[tokio::test]
    async fn a_handler_sink_runs_the_handler_registered_under_its_name() {
        let (calls, handler) = counting();
        let set = SinkSet::from_config(
            &[handler_config("audit", Filter::default())],
            HashMap::from([("audit".to_owned(), handler)]),
        )
        .unwrap();
        let sink = set.get("audit").unwrap();

        sink.send(&delivery_id("msg_2abc", "audit"), &sample())
            .await
            .unwrap();

        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sink.kind(), "handler");
    }

    #[test]
    fn a_handler_sink_without_a_registered_handler_is_refused() {
        let error = SinkSet::from_config(
            &[handler_config("audit", Filter::default())],
            HashMap::new(),
        )
        .unwrap_err();

        assert!(matches!(error, SinkConfigError::UnknownHandler { name } if name == "audit"));
    }

    #[test]
    fn only_the_sinks_whose_filter_matches_receive_an_outcome() {
        let (_, handler) = counting();
        let nightly = Filter {
            types: vec!["batch.*".into()],
            metadata: [("job_group".to_owned(), json!("nightly-eval"))].into(),
        };
        let videos = Filter {
            types: vec!["video.*".into()],
            ..Filter::default()
        };
        let set = SinkSet::from_config(
            &[
                handler_config("nightly", nightly),
                handler_config("videos", videos),
                handler_config("everything", Filter::default()),
            ],
            HashMap::from([
                ("nightly".to_owned(), handler.clone()),
                ("videos".to_owned(), handler.clone()),
                ("everything".to_owned(), handler),
            ]),
        )
        .unwrap();

        let outcome = sample();
        let names: Vec<&str> = set.matching(&outcome).map(Sink::name).collect();

        assert_eq!(names, ["nightly", "everything"]);
        assert_eq!(set.max_inline_bytes(), 100);
    }

    #[tokio::test]
    async fn a_handlers_retry_discard_and_panic_become_sink_errors() {
        let retry: Arc<dyn Handler> = Arc::new(|_: &Outcome| async {
            Err(HandlerError::retry_after("busy", Duration::from_secs(3)))
        });
        let discard: Arc<dyn Handler> =
            Arc::new(|_: &Outcome| async { Err(HandlerError::discard("not ours")) });
        let panics: Arc<dyn Handler> = Arc::new(|_: &Outcome| async {
            if true {
                panic!("user code bug");
            }
            Ok(())
        });
        let sink = |handler| {
            Sink::new(
                "h",
                Filter::default(),
                Target::Handler {
                    handler,
                    inline_max_bytes: 0,
                    timeout: Duration::from_secs(1),
                },
            )
        };
        let outcome = sample();

        let retried = sink(retry).send("gh_1", &outcome).await.unwrap_err();
        let discarded = sink(discard).send("gh_1", &outcome).await.unwrap_err();
        let panicked = sink(panics).send("gh_1", &outcome).await.unwrap_err();

        assert!(retried.is_retryable());
        assert_eq!(retried.retry_after(), Some(Duration::from_secs(3)));
        assert!(!discarded.is_retryable());
        assert!(matches!(discarded, SinkError::HandlerDiscard { .. }));
        assert!(matches!(panicked, SinkError::HandlerPanicked));
        assert!(panicked.is_retryable());
    }

    /// Before the timeout, a hanging handler held its delivery past the lease (and was then run
    /// a second time, concurrently) and blocked shutdown forever.
    #[tokio::test(start_paused = true)]
    async fn a_handler_that_hangs_fails_its_attempt_at_the_sinks_timeout() {
        let hangs: Arc<dyn Handler> = Arc::new(|_: &Outcome| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let sink = Sink::new(
            "h",
            Filter::default(),
            Target::Handler {
                handler: hangs,
                inline_max_bytes: 0,
                timeout: Duration::from_secs(7),
            },
        );
        let started = tokio::time::Instant::now();

        let error = sink.send("gh_1", &sample()).await.unwrap_err();

        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(matches!(error, SinkError::HandlerTimeout { .. }));
        assert!(error.is_retryable());
        assert_eq!(
            error.to_string(),
            "the handler did not finish within 7s (timeout_secs)"
        );
    }

    #[test]
    fn a_sink_timeout_at_or_beyond_the_lease_is_refused() {
        let config = handler_config("slow", Filter::default());
        let lease = Duration::from_secs(10);
        let error = check_timeouts_within(std::slice::from_ref(&config), lease).unwrap_err();
        assert_eq!(
            error.to_string(),
            "sink \"slow\": timeout_secs (10) must be below worker_lease_secs (10)"
        );
        assert!(check_timeouts_within(&[config], Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn from_config_validates_first() {
        let http = |name: &str| {
            SinkConfig::Http(HttpSinkConfig {
                name: name.into(),
                url: "http://127.0.0.1:1/".into(),
                secret: Redacted::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                timeout_secs: 1,
                inline_max_bytes: 1,
                retry: Default::default(),
                filter: Filter::default(),
            })
        };

        let error = SinkSet::from_config(&[http("a"), http("a")], HashMap::new()).unwrap_err();

        assert!(matches!(error, SinkConfigError::DuplicateName { .. }));
    }

    #[test]
    fn an_endpoint_is_shown_without_credentials_path_or_query() {
        let nats = Url::parse("nats://user:pw@10.0.0.1:4222/x?y").unwrap();
        let http = Url::parse("https://user:pw@example.com/hook?token=t").unwrap();

        assert_eq!(display_endpoint(&nats), "nats://10.0.0.1:4222");
        assert_eq!(display_endpoint(&http), "https://example.com:443");
    }
}
