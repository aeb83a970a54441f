//! Logging and traces: JSON lines in containers, readable lines on a terminal, `RUST_LOG`
//! filters; spans exported over OTLP when an endpoint is configured (see [`traces`]).

pub mod traces;

use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use traces::TraceSetupError;

/// How logs are written: JSON lines for machines, pretty for a terminal, or chosen by
/// whether stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

/// The filter when `RUST_LOG` is unset: our own info, libraries' warnings (the OpenTelemetry
/// SDK's included: a failed export is a warning).
const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,reqwest=warn,opentelemetry=warn";

/// What [`init`] installed that needs an orderly end: the trace exporter's last batch.
#[must_use = "call `shutdown` before the process exits, or the last spans are not exported"]
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still batched and stops the exporter; nothing without one. Blocking
    /// inside the SDK (it waits for its export thread), so off the async threads.
    pub async fn shutdown(self) {
        let Some(provider) = self.traces else {
            return;
        };
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = stopped {
            tracing::warn!(error = %error, "exporting the last spans failed");
        }
    }
}

/// Installs the global subscriber, with the OTLP trace exporter when the standard `OTEL_*`
/// variables ask for one. Safe to call more than once (later calls install nothing), so
/// tests that build several applications in one process do not fight over it.
pub fn init(format: LogFormat) -> Result<Telemetry, TraceSetupError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // stderr: stdout is for what a command prints (`--json` output must be one JSON document).
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        logs.boxed()
    };
    let provider = traces::provider_from_env()?;
    // `None` is a layer that does nothing: without an endpoint spans cost what they did.
    let spans = provider.as_ref().map(traces::layer);
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .with(filter)
        .try_init()
        .is_ok();
    match provider {
        Some(provider) if installed => {
            traces::install(&provider);
            if let Some((variable, value)) = traces::unsupported_protocol() {
                tracing::warn!(
                    variable,
                    value,
                    "only OTLP/HTTP with protobuf is built in: exporting with http/protobuf"
                );
            }
            Ok(Telemetry {
                traces: Some(provider),
            })
        }
        // Another subscriber was there first (a test, an embedding application): its
        // exporter, if any, is the one in use.
        Some(provider) => {
            let _ = provider.shutdown();
            Ok(Telemetry::default())
        }
        None => Ok(Telemetry::default()),
    }
}

/// An error and its causes, one line: "outer: inner: innermost".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    join_causes(error.to_string(), causes)
}

/// Joins an error's text and its causes' with ": ", saying each thing once: many libraries
/// repeat their source's text in their own (sqlx: "error returned from database: (code: 14)
/// unable to open database file", whose source says "(code: 14) unable to open database
/// file" again), so a cause already contained in the text so far is left out.
pub fn join_causes(first: String, causes: impl IntoIterator<Item = String>) -> String {
    let mut text = first;
    for cause in causes {
        if cause.is_empty() || text.contains(cause.as_str()) {
            continue;
        }
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let joined = join_causes(
            "listing events".into(),
            [
                "error returned from database: (code: 14) unable to open database file".into(),
                "(code: 14) unable to open database file".into(),
                "the folder is read-only".into(),
            ],
        );
        assert_eq!(
            joined,
            "listing events: error returned from database: (code: 14) unable to open database file: the folder is read-only"
        );
    }
}
