//! The NATS sink: publish the outcome to a JetStream subject and wait for the stream's ack.
//!
//! Exactly one message per (outcome, sink), even though the delivery queue retries: every
//! publish carries `Nats-Msg-Id` = the delivery id, and JetStream drops a message whose id it
//! has seen within the stream's duplicate window, answering with `duplicate: true`. So a retry
//! after a lost ack, the case that would otherwise store the message twice, is harmless, and a
//! duplicate ack counts as success.
//!
//! The connection is made on first use and then kept: the client reconnects by itself when the
//! server goes away. A failed first connection is retried by the next attempt. Publishing
//! without waiting for the ack would be faster, but then a message lost on the way would count
//! as delivered.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context, ContextBuilder};
use bytes::Bytes;
use tokio::sync::OnceCell;
use url::Url;

use super::outcome::Outcome;
use super::sinks::{NatsSinkConfig, SinkConfigError, SubjectTemplate};
use super::{SinkError, display_endpoint};

/// A stream the sink creates when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub duplicate_window: Duration,
}

/// What JetStream acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub subject: String,
    pub stream: String,
    /// The stream sequence of the message (of the first copy, for a duplicate).
    pub sequence: u64,
    /// The stream already had a message with this `Nats-Msg-Id`: nothing new was stored.
    pub duplicate: bool,
}

/// Publishes outcomes to one NATS server.
pub struct NatsSink {
    url: Url,
    /// `nats://host:port`, the only part of the URL that messages show.
    endpoint: String,
    template: SubjectTemplate,
    /// Connecting, each JetStream API request, and waiting for an ack.
    timeout: Duration,
    inline_max_bytes: usize,
    stream: Option<StreamSpec>,
    context: OnceCell<Context>,
}

impl NatsSink {
    pub fn new(
        url: Url,
        template: SubjectTemplate,
        timeout: Duration,
        inline_max_bytes: usize,
    ) -> NatsSink {
        NatsSink {
            endpoint: display_endpoint(&url),
            url,
            template,
            timeout,
            inline_max_bytes,
            stream: None,
            context: OnceCell::new(),
        }
    }

    /// Builds the sink from its validated configuration; a `stream` there covers the subject
    /// (`gemini.{type}` → `gemini.>`).
    pub fn from_config(config: &NatsSinkConfig) -> Result<NatsSink, SinkConfigError> {
        let template = config.template()?;
        let stream = match &config.stream {
            Some(name) => Some(StreamSpec {
                name: name.clone(),
                subjects: vec![template.stream_subject().ok_or_else(|| {
                    SinkConfigError::MalformedTemplate {
                        name: config.name.clone(),
                        why: "gemhook can only create a stream when {type} ends the subject",
                    }
                })?],
                duplicate_window: config.duplicate_window(),
            }),
            None => None,
        };
        let mut sink = NatsSink::new(
            config.parsed_url()?,
            template,
            config.timeout(),
            config.inline_max_bytes,
        );
        sink.stream = stream;
        Ok(sink)
    }

    pub fn inline_max_bytes(&self) -> usize {
        self.inline_max_bytes
    }

    pub fn template(&self) -> &SubjectTemplate {
        &self.template
    }

    /// One publish of the outcome, acknowledged by JetStream. A duplicate ack is success.
    pub async fn send(&self, delivery_id: &str, outcome: &Outcome) -> Result<Published, SinkError> {
        let subject =
            self.template
                .render(&outcome.event_type)
                .ok_or_else(|| SinkError::InvalidSubject {
                    event_type: outcome.event_type.clone(),
                })?;
        let payload = outcome
            .encode(self.inline_max_bytes)
            .map_err(SinkError::Encode)?;
        let published = self
            .publish(&subject, delivery_id, Bytes::from(payload))
            .await?;
        if published.duplicate {
            tracing::debug!(
                delivery_id,
                subject = %published.subject,
                stream = %published.stream,
                "JetStream already had this delivery; the repeat was dropped"
            );
        }
        Ok(published)
    }

    /// Publishes `payload` with `Nats-Msg-Id: delivery_id` and waits for the ack.
    pub async fn publish(
        &self,
        subject: &str,
        delivery_id: &str,
        payload: Bytes,
    ) -> Result<Published, SinkError> {
        let context = self.jetstream().await?;
        let publish_error = |source: async_nats::jetstream::context::PublishError| {
            let subject = subject.to_owned();
            match source.kind() {
                PublishErrorKind::StreamNotFound => SinkError::NoStream { subject },
                PublishErrorKind::TimedOut => SinkError::AckTimeout { subject },
                _ => SinkError::Publish { subject, source },
            }
        };
        let ack = context
            .send_publish(
                subject.to_owned(),
                PublishMessage::build()
                    .payload(payload)
                    .message_id(delivery_id),
            )
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(Published {
            subject: subject.to_owned(),
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Creates the stream `name` capturing `subjects` with the given duplicate window, unless
    /// a stream of that name exists (which is then left as it is).
    pub async fn ensure_stream(
        &self,
        name: &str,
        subjects: Vec<String>,
        duplicate_window: Duration,
    ) -> Result<(), SinkError> {
        let context = self.jetstream().await?;
        context
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects,
                duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|source| SinkError::CreateStream {
                stream: name.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// [`NatsSink::ensure_stream`] for the configured `stream`; nothing without one.
    pub async fn ensure_configured_stream(&self) -> Result<(), SinkError> {
        match &self.stream {
            Some(spec) => {
                self.ensure_stream(&spec.name, spec.subjects.clone(), spec.duplicate_window)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The JetStream context, connecting on first use.
    pub async fn jetstream(&self) -> Result<&Context, SinkError> {
        self.context
            .get_or_try_init(|| async {
                let options = async_nats::ConnectOptions::new()
                    .name(concat!("gemhook/", env!("CARGO_PKG_VERSION")))
                    .connection_timeout(self.timeout);
                let client = async_nats::connect_with_options(self.url.as_str(), options)
                    .await
                    .map_err(|source| SinkError::NatsConnect {
                        endpoint: self.endpoint.clone(),
                        source,
                    })?;
                tracing::info!(endpoint = %self.endpoint, "connected to NATS");
                Ok(ContextBuilder::new().timeout(self.timeout).build(client))
            })
            .await
    }
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("endpoint", &self.endpoint)
            .field("template", &self.template)
            .field("timeout", &self.timeout)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("stream", &self.stream)
            .field("connected", &self.context.initialized())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! Against the real NATS JetStream server on 127.0.0.1:4222 (`.ci/run` starts it).

    use super::*;
    use crate::deliver::delivery_id;
    use crate::deliver::outcome::tests::sample;

    const LOCAL_NATS: &str = "nats://127.0.0.1:4222";

    /// A stream name and subject prefix no other test (or run) uses. Each test deletes its
    /// stream before asserting, so a failed assertion leaves nothing behind.
    fn unique() -> (String, String) {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        (format!("GEMHOOK_TEST_{tag}"), format!("gemhook-test-{tag}"))
    }

    fn local_sink(prefix: &str) -> NatsSink {
        NatsSink::new(
            Url::parse(LOCAL_NATS).unwrap(),
            SubjectTemplate::parse(&format!("{prefix}.{{type}}")).unwrap(),
            Duration::from_secs(5),
            65536,
        )
    }

    async fn message_count(sink: &NatsSink, stream: &str) -> u64 {
        let context = sink.jetstream().await.unwrap();
        let mut stream = context.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    #[tokio::test]
    async fn a_repeated_publish_of_one_delivery_is_stored_once() {
        let (stream, prefix) = unique();
        let sink = local_sink(&prefix);
        sink.ensure_stream(
            &stream,
            vec![format!("{prefix}.>")],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        let outcome = sample();
        let id = delivery_id(&outcome.webhook_id, "bus");

        let first = sink.send(&id, &outcome).await;
        let second = sink.send(&id, &outcome).await;
        let count = message_count(&sink, &stream).await;
        sink.jetstream()
            .await
            .unwrap()
            .delete_stream(&stream)
            .await
            .unwrap();

        let first = first.unwrap();
        let second = second.unwrap();
        assert_eq!(first.subject, format!("{prefix}.batch.succeeded"));
        assert_eq!(first.stream, stream);
        assert!(!first.duplicate);
        assert!(second.duplicate);
        assert_eq!(second.sequence, first.sequence);
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn each_sink_of_one_outcome_is_its_own_message() {
        let (stream, prefix) = unique();
        let sink = local_sink(&prefix);
        sink.ensure_stream(
            &stream,
            vec![format!("{prefix}.>")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let outcome = sample();

        sink.send(&delivery_id(&outcome.webhook_id, "bus-a"), &outcome)
            .await
            .unwrap();
        sink.send(&delivery_id(&outcome.webhook_id, "bus-b"), &outcome)
            .await
            .unwrap();
        let count = message_count(&sink, &stream).await;
        sink.jetstream()
            .await
            .unwrap()
            .delete_stream(&stream)
            .await
            .unwrap();

        assert_eq!(count, 2);
    }

    #[tokio::test]
    async fn the_message_is_the_outcome_json_under_the_delivery_id() {
        let (stream, prefix) = unique();
        let sink = local_sink(&prefix);
        sink.ensure_stream(
            &stream,
            vec![format!("{prefix}.>")],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let outcome = sample();
        let id = delivery_id(&outcome.webhook_id, "bus");

        let published = sink.send(&id, &outcome).await.unwrap();
        let context = sink.jetstream().await.unwrap();
        let message = context
            .get_stream(&stream)
            .await
            .unwrap()
            .get_raw_message(published.sequence)
            .await
            .unwrap();
        context.delete_stream(&stream).await.unwrap();

        let headers = message.headers;
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|value| value.as_str().to_owned()),
            Some(id)
        );
        assert_eq!(
            serde_json::from_slice::<Outcome>(&message.payload).unwrap(),
            outcome
        );
    }

    #[tokio::test]
    async fn a_subject_no_stream_captures_is_a_retryable_no_stream() {
        let (_, prefix) = unique();
        let sink = local_sink(&prefix);

        let error = sink.send("gh_1", &sample()).await.unwrap_err();

        assert!(matches!(error, SinkError::NoStream { .. }), "{error:?}");
        assert!(error.is_retryable());
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_a_retryable_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let sink = NatsSink::new(
            Url::parse(&format!("nats://user:s3cretpw@{address}")).unwrap(),
            SubjectTemplate::parse("gemini.{type}").unwrap(),
            Duration::from_secs(2),
            0,
        );

        let error = sink.send("gh_1", &sample()).await.unwrap_err();

        assert!(matches!(error, SinkError::NatsConnect { .. }), "{error:?}");
        assert!(error.is_retryable());
        let shown = format!("{} {error:?}", crate::telemetry::error_chain(&error));
        assert!(!shown.contains("s3cretpw"), "{shown}");
    }

    #[tokio::test]
    async fn the_configured_stream_is_created_covering_the_subject() {
        let (stream, prefix) = unique();
        let config = NatsSinkConfig {
            name: "bus".into(),
            url: LOCAL_NATS.into(),
            subject: format!("{prefix}.{{type}}"),
            stream: Some(stream.clone()),
            duplicate_window_secs: 300,
            timeout_secs: 5,
            inline_max_bytes: 0,
            retry: Default::default(),
            filter: Default::default(),
        };
        let sink = NatsSink::from_config(&config).unwrap();

        sink.ensure_configured_stream().await.unwrap();
        let context = sink.jetstream().await.unwrap();
        let info = context
            .get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .config
            .clone();
        context.delete_stream(&stream).await.unwrap();

        assert_eq!(info.subjects, vec![format!("{prefix}.>")]);
        assert_eq!(info.duplicate_window, Duration::from_secs(300));
    }
}
