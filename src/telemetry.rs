//! Logging: JSON lines in containers, readable lines on a terminal; `RUST_LOG` filters.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How logs are written: JSON lines for machines, pretty for a terminal, or chosen by
/// whether stderr is a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Pretty,
    Json,
}

/// The filter when `RUST_LOG` is unset: our own info, libraries' warnings.
const DEFAULT_FILTER: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so
/// tests that build several applications in one process do not fight over it.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // stderr: stdout is for what a command prints (`--json` output must be one JSON document).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
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
