//! Pure: the `[[sinks]]` configuration, its validation, the filters and the subject template.
//!
//! ```toml
//! [[sinks]]
//! name = "nightly"
//! kind = "http"
//! url = "http://evals.internal:8000/gemhook"
//! secret = "whsec_..."          # gemhook's own secret: the application verifies with it
//! timeout_secs = 10
//! inline_max_bytes = 65536
//! [sinks.retry]                 # optional; these are the defaults
//! max_attempts = 8
//! schedule_secs = [5, 300, 1800, 7200, 18000, 36000, 36000]
//! [sinks.filter]
//! types = ["batch.*", "interaction.requires_action"]
//! metadata = { job_group = "nightly-eval" }
//!
//! [[sinks]]
//! name = "bus"
//! kind = "nats"
//! url = "nats://127.0.0.1:4222"
//! subject = "gemini.{type}"     # → gemini.batch.succeeded
//! stream = "GEMINI"             # optional: created at start-up when missing
//!
//! [[sinks]]
//! name = "audit"                # the Handler registered under this name
//! kind = "handler"
//! ```
//!
//! Validation reports the first problem by sink name and never echoes a secret or a URL (URLs
//! may carry credentials).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::outcome::{Outcome, scalar_text};
use crate::queue::retry::{RetryPolicy, SINK_SCHEDULE_SECS};
use crate::redact::Redacted;
use crate::verify::{SecretError, WebhookSecret};

pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// Inline interaction JSON up to this size by default: most interactions that need an action
/// are a few kilobytes, and 64 KiB keeps a NATS message far below its 1 MiB default limit.
pub const DEFAULT_INLINE_MAX_BYTES: usize = 64 * 1024;
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_SUBJECT: &str = "gemini.{type}";
/// JetStream drops a re-published `Nats-Msg-Id` only within the stream's duplicate window.
/// A retry after a lost ack can come after a long backoff, or after an operator's manual retry,
/// so a stream gemhook creates remembers ids for a day (like Gemini's own retry horizon).
pub const DEFAULT_DUPLICATE_WINDOW_SECS: u64 = 24 * 60 * 60;

/// One `[[sinks]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    Http(HttpSinkConfig),
    Nats(NatsSinkConfig),
    Handler(HandlerSinkConfig),
}

impl SinkConfig {
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Http(c) => &c.name,
            SinkConfig::Nats(c) => &c.name,
            SinkConfig::Handler(c) => &c.name,
        }
    }

    /// How long one attempt at this sink may take.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(match self {
            SinkConfig::Http(c) => c.timeout_secs,
            SinkConfig::Nats(c) => c.timeout_secs,
            SinkConfig::Handler(c) => c.timeout_secs,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Http(_) => "http",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Handler(_) => "handler",
        }
    }

    pub fn filter(&self) -> &Filter {
        match self {
            SinkConfig::Http(c) => &c.filter,
            SinkConfig::Nats(c) => &c.filter,
            SinkConfig::Handler(c) => &c.filter,
        }
    }

    /// How this sink's failed deliveries are retried.
    pub fn retry_policy(&self) -> RetryPolicy {
        let retry = match self {
            SinkConfig::Http(c) => &c.retry,
            SinkConfig::Nats(c) => &c.retry,
            SinkConfig::Handler(c) => &c.retry,
        };
        retry.policy()
    }
}

/// `[sinks.retry]`: an application may be down for a day, so by default a delivery is tried 8
/// times over about 27.6 hours (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h between attempts, each
/// ±10 %), the schedule Standard Webhooks senders use. `schedule_secs` replaces the waits (the
/// last repeats); `max_attempts` defaults to one more than the schedule has steps.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub schedule_secs: Option<Vec<u64>>,
}

/// No wait in a schedule may be longer than a week: a typo (`36000000`) would otherwise park a
/// delivery for a year.
pub const MAX_SCHEDULE_STEP_SECS: u64 = 7 * 24 * 3600;

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        let steps = self.schedule_secs.as_deref().unwrap_or(&SINK_SCHEDULE_SECS);
        let max_attempts = self.max_attempts.unwrap_or(steps.len() as i32 + 1);
        RetryPolicy::schedule(max_attempts, steps)
    }

    fn check(&self, name: &str) -> Result<(), SinkConfigError> {
        let invalid = |why: &'static str| SinkConfigError::InvalidRetry {
            name: name.to_owned(),
            why,
        };
        if self.max_attempts.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err(invalid("max_attempts must be between 1 and 1000"));
        }
        match self.schedule_secs.as_deref() {
            Some([]) => Err(invalid("schedule_secs must name at least one wait")),
            Some(steps) if steps.iter().any(|&s| s > MAX_SCHEDULE_STEP_SECS) => Err(invalid(
                "a wait in schedule_secs is longer than a week (604800)",
            )),
            _ => Ok(()),
        }
    }
}

/// `kind = "http"`: POST the outcome, signed with Standard Webhooks `v1`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    pub name: String,
    /// An http(s) URL.
    pub url: String,
    /// gemhook's `whsec_` secret for this sink; the application verifies with it.
    pub secret: Redacted,
    /// Whole request, connection to last byte of the answer, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Interaction JSON up to this size, in bytes, is sent inline.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: usize,
    /// How failed attempts are retried (default: [`RetryConfig`]'s).
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub filter: Filter,
}

impl HttpSinkConfig {
    pub fn parsed_url(&self) -> Result<Url, SinkConfigError> {
        Url::parse(&self.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| SinkConfigError::InvalidUrl {
                name: self.name.clone(),
                expected: "http(s)",
            })
    }

    pub fn parsed_secret(&self) -> Result<WebhookSecret, SinkConfigError> {
        WebhookSecret::parse(self.secret.expose()).map_err(|reason| {
            SinkConfigError::InvalidSecret {
                name: self.name.clone(),
                reason,
            }
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

impl fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("name", &self.name)
            .field("url", &DisplayUrl(&self.url))
            .field("secret", &self.secret)
            .field("timeout_secs", &self.timeout_secs)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("retry", &self.retry)
            .field("filter", &self.filter)
            .finish()
    }
}

/// `kind = "nats"`: publish to JetStream and wait for its ack.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    pub name: String,
    /// `nats://host:port` or `tls://host:port`, optionally with `user:password@`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// The subject, with `{type}` replaced by the event type.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A stream to create at start-up, covering the subject, when it does not exist yet.
    #[serde(default)]
    pub stream: Option<String>,
    /// The duplicate window of a stream gemhook creates, in seconds.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// Connecting, and waiting for the publish ack, in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Interaction JSON up to this size, in bytes, is sent inline.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: usize,
    /// How failed attempts are retried (default: [`RetryConfig`]'s).
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub filter: Filter,
}

impl NatsSinkConfig {
    pub fn parsed_url(&self) -> Result<Url, SinkConfigError> {
        Url::parse(&self.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "nats" | "tls") && url.host().is_some())
            .ok_or_else(|| SinkConfigError::InvalidUrl {
                name: self.name.clone(),
                expected: "nats:// or tls://",
            })
    }

    pub fn template(&self) -> Result<SubjectTemplate, SinkConfigError> {
        SubjectTemplate::parse(&self.subject).map_err(|problem| match problem {
            TemplateProblem::UnknownVariable(variable) => {
                SinkConfigError::UnknownTemplateVariable {
                    name: self.name.clone(),
                    variable,
                }
            }
            TemplateProblem::Malformed(why) => SinkConfigError::MalformedTemplate {
                name: self.name.clone(),
                why,
            },
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}

impl fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("name", &self.name)
            .field("url", &DisplayUrl(&self.url))
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .field("duplicate_window_secs", &self.duplicate_window_secs)
            .field("timeout_secs", &self.timeout_secs)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("retry", &self.retry)
            .field("filter", &self.filter)
            .finish()
    }
}

/// `kind = "handler"`: the embedded [`super::Handler`] registered under `name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSinkConfig {
    pub name: String,
    /// Interaction JSON up to this size, in bytes, is passed inline.
    #[serde(default = "default_inline_max_bytes")]
    pub inline_max_bytes: usize,
    /// How long one call may run before it counts as a failed (retryable) attempt. Must stay
    /// below the worker's lease, or a slow call would be rescued and run twice at once.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// How failed attempts are retried (default: [`RetryConfig`]'s).
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub filter: Filter,
}

/// Which outcomes a sink receives: all of `types` (any one of them) and `metadata` (every key)
/// must match. An empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Exact types (`batch.succeeded`), prefix globs (`batch.*`), or `*`; empty = all.
    #[serde(default)]
    pub types: Vec<String>,
    /// `user_metadata` keys and the values they must have: strings, numbers or booleans,
    /// compared as text (`run = 7` matches `"run": 7` and `"run": "7"`).
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

impl Filter {
    pub fn matches(&self, outcome: &Outcome) -> bool {
        self.matches_parts(&outcome.event_type, outcome.user_metadata.as_ref())
    }

    pub fn matches_parts(&self, event_type: &str, user_metadata: Option<&Value>) -> bool {
        let type_ok = self.types.is_empty()
            || self
                .types
                .iter()
                .any(|pattern| type_matches(pattern, event_type));
        type_ok
            && self.metadata.iter().all(|(key, wanted)| {
                let actual = user_metadata.and_then(|m| m.get(key));
                match (actual.and_then(scalar_text), scalar_text(wanted)) {
                    (Some(actual), Some(wanted)) => actual == wanted,
                    // A missing key, or a value that is not a scalar, is no match.
                    _ => false,
                }
            })
    }

    fn check(&self, name: &str) -> Result<(), SinkConfigError> {
        if let Some(pattern) = self.types.iter().find(|p| !is_type_pattern(p)) {
            return Err(SinkConfigError::InvalidTypePattern {
                name: name.to_owned(),
                pattern: pattern.clone(),
            });
        }
        if let Some(key) = self
            .metadata
            .iter()
            .find_map(|(key, value)| scalar_text(value).is_none().then_some(key))
        {
            return Err(SinkConfigError::InvalidMetadataValue {
                name: name.to_owned(),
                key: key.clone(),
            });
        }
        Ok(())
    }
}

/// `*` matches every type; `batch.*` every type that starts with `batch.`; anything else only
/// itself.
fn type_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event_type
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1),
        None => pattern == event_type,
    }
}

/// A `*` anywhere but in a trailing `.*` (or alone) is refused rather than guessed at.
fn is_type_pattern(pattern: &str) -> bool {
    let literal = pattern.strip_suffix(".*").unwrap_or(pattern);
    pattern == "*" || (!literal.is_empty() && !literal.contains('*'))
}

/// Why a subject template was refused (before the sink name is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    UnknownVariable(String),
    Malformed(&'static str),
}

/// A NATS subject with `{type}` placeholders, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Type,
}

/// Stands in for an event type when a template is checked: two tokens, like real types.
const SAMPLE_TYPE: &str = "batch.succeeded";

impl SubjectTemplate {
    pub fn parse(text: &str) -> Result<SubjectTemplate, TemplateProblem> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(TemplateProblem::Malformed("a '}' without its '{'"));
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Literal(rest[..at].to_owned()));
                    }
                    let Some(close) = rest[at..].find('}') else {
                        return Err(TemplateProblem::Malformed("a '{' without its '}'"));
                    };
                    match &rest[at + 1..at + close] {
                        "type" => parts.push(Part::Type),
                        other => return Err(TemplateProblem::UnknownVariable(other.to_owned())),
                    }
                    rest = &rest[at + close + 1..];
                }
            }
        }
        let template = SubjectTemplate { parts };
        if !is_publish_subject(&template.render_unchecked(SAMPLE_TYPE)) {
            return Err(TemplateProblem::Malformed(
                "it does not make a valid NATS subject (empty tokens, spaces or wildcards)",
            ));
        }
        Ok(template)
    }

    /// The subject for one event type; `None` when the type would make an invalid subject
    /// (a payload's type with spaces or wildcards must not pick where we publish).
    pub fn render(&self, event_type: &str) -> Option<String> {
        let subject = self.render_unchecked(event_type);
        is_publish_subject(&subject).then_some(subject)
    }

    /// The subject a stream must list to capture every rendering: `{type}` at the end becomes
    /// `>`. `None` when `{type}` sits elsewhere (a type has any number of tokens, so no
    /// wildcard covers it there): list the subjects explicitly then.
    pub fn stream_subject(&self) -> Option<String> {
        match self.parts.as_slice() {
            [prefix @ .., Part::Type] if !prefix.contains(&Part::Type) => {
                let prefix = self.literal(prefix);
                // `>` must be a whole token: `gemini{type}` has no stream wildcard.
                (prefix.is_empty() || prefix.ends_with('.')).then(|| format!("{prefix}>"))
            }
            parts if !parts.contains(&Part::Type) => Some(self.literal(parts)),
            _ => None,
        }
    }

    fn literal(&self, parts: &[Part]) -> String {
        parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_str(),
                Part::Type => "",
            })
            .collect()
    }

    fn render_unchecked(&self, event_type: &str) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_str(),
                Part::Type => event_type,
            })
            .collect()
    }
}

/// A subject one may publish to: dot-separated non-empty tokens of printable characters, no
/// wildcards.
fn is_publish_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

/// A JetStream stream name: no spaces, dots, wildcards or path separators.
fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

/// Why the sinks' configuration was refused. Never contains a secret or a URL.
#[derive(Debug, thiserror::Error)]
pub enum SinkConfigError {
    #[error("sink #{position} has an empty name")]
    EmptyName { position: usize },
    #[error("sink name {name:?} is used more than once")]
    DuplicateName { name: String },
    #[error("sink {name:?}: url is not a valid {expected} URL")]
    InvalidUrl {
        name: String,
        expected: &'static str,
    },
    #[error("sink {name:?}: the secret is invalid: {reason}")]
    InvalidSecret { name: String, reason: SecretError },
    #[error("sink {name:?}: timeout_secs must be at least 1")]
    ZeroTimeout { name: String },
    #[error(
        "sink {name:?}: timeout_secs ({timeout_secs}) must be below worker_lease_secs ({lease_secs})"
    )]
    TimeoutBeyondLease {
        name: String,
        timeout_secs: u64,
        lease_secs: u64,
    },
    #[error("sink {name:?}: the subject uses {{{variable}}}, but only {{type}} is known")]
    UnknownTemplateVariable { name: String, variable: String },
    #[error("sink {name:?}: the subject template is malformed: {why}")]
    MalformedTemplate { name: String, why: &'static str },
    #[error("sink {name:?}: the stream name must not be empty or contain spaces, '.', '*' or '>'")]
    InvalidStreamName { name: String },
    #[error(
        "sink {name:?}: type pattern {pattern:?} is neither a type, a prefix glob like \"batch.*\", nor \"*\""
    )]
    InvalidTypePattern { name: String, pattern: String },
    #[error("sink {name:?}: metadata value for {key:?} must be a string, number or boolean")]
    InvalidMetadataValue { name: String, key: String },
    #[error("sink {name:?}: retry: {why}")]
    InvalidRetry { name: String, why: &'static str },
    #[error("sink {name:?}: no handler is registered under this name")]
    UnknownHandler { name: String },
    #[error("sink {name:?}: the HTTP client could not be built")]
    HttpClient {
        name: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Checks every sink; the first problem is returned.
pub fn validate(configs: &[SinkConfig]) -> Result<(), SinkConfigError> {
    let mut names = HashSet::new();
    for (index, config) in configs.iter().enumerate() {
        let name = config.name();
        if name.trim().is_empty() {
            return Err(SinkConfigError::EmptyName {
                position: index + 1,
            });
        }
        if !names.insert(name) {
            return Err(SinkConfigError::DuplicateName {
                name: name.to_owned(),
            });
        }
        config.filter().check(name)?;
        match config {
            SinkConfig::Http(c) => c.retry.check(name)?,
            SinkConfig::Nats(c) => c.retry.check(name)?,
            SinkConfig::Handler(c) => c.retry.check(name)?,
        }
        match config {
            SinkConfig::Http(http) => {
                http.parsed_url()?;
                http.parsed_secret()?;
                check_timeout(name, http.timeout_secs)?;
            }
            SinkConfig::Nats(nats) => {
                nats.parsed_url()?;
                nats.template()?;
                check_timeout(name, nats.timeout_secs)?;
                if nats.stream.as_deref().is_some_and(|s| !is_stream_name(s)) {
                    return Err(SinkConfigError::InvalidStreamName {
                        name: name.to_owned(),
                    });
                }
            }
            SinkConfig::Handler(handler) => check_timeout(name, handler.timeout_secs)?,
        }
    }
    Ok(())
}

/// Every sink's timeout must end an attempt before its lease does: past the lease the delivery
/// is rescued and sent again while the first attempt still runs.
pub fn check_timeouts_within(
    configs: &[SinkConfig],
    lease: std::time::Duration,
) -> Result<(), SinkConfigError> {
    for config in configs {
        let timeout = config.timeout();
        if timeout >= lease {
            return Err(SinkConfigError::TimeoutBeyondLease {
                name: config.name().to_owned(),
                timeout_secs: timeout.as_secs(),
                lease_secs: lease.as_secs(),
            });
        }
    }
    Ok(())
}

fn check_timeout(name: &str, timeout_secs: u64) -> Result<(), SinkConfigError> {
    if timeout_secs == 0 {
        return Err(SinkConfigError::ZeroTimeout {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A configured URL in `Debug`: scheme, host and port only, since user info, paths and queries
/// may carry credentials.
struct DisplayUrl<'a>(&'a str);

impl fmt::Debug for DisplayUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Url::parse(self.0) {
            Ok(url) => f.write_str(&super::display_endpoint(&url)),
            Err(_) => f.write_str("<invalid url>"),
        }
    }
}

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

fn default_inline_max_bytes() -> usize {
    DEFAULT_INLINE_MAX_BYTES
}

fn default_nats_url() -> String {
    DEFAULT_NATS_URL.to_owned()
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_owned()
}

fn default_duplicate_window_secs() -> u64 {
    DEFAULT_DUPLICATE_WINDOW_SECS
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Format;
    use serde_json::json;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[derive(Deserialize)]
    struct File {
        sinks: Vec<SinkConfig>,
    }

    fn parse(toml: &str) -> Vec<SinkConfig> {
        figment::Figment::from(figment::providers::Toml::string(toml))
            .extract::<File>()
            .unwrap()
            .sinks
    }

    fn filter(types: &[&str], metadata: Value) -> Filter {
        Filter {
            types: types.iter().map(|t| t.to_string()).collect(),
            metadata: serde_json::from_value(metadata).unwrap(),
        }
    }

    fn http(name: &str) -> SinkConfig {
        SinkConfig::Http(HttpSinkConfig {
            name: name.into(),
            url: "http://127.0.0.1:9000/hook".into(),
            secret: Redacted::new(SECRET),
            timeout_secs: 10,
            inline_max_bytes: 10,
            retry: Default::default(),
            filter: Filter::default(),
        })
    }

    fn nats(name: &str, subject: &str) -> SinkConfig {
        SinkConfig::Nats(NatsSinkConfig {
            name: name.into(),
            url: DEFAULT_NATS_URL.into(),
            subject: subject.into(),
            stream: None,
            duplicate_window_secs: 60,
            timeout_secs: 10,
            inline_max_bytes: 10,
            retry: Default::default(),
            filter: Filter::default(),
        })
    }

    #[test]
    fn every_kind_of_sink_reads_from_toml_with_its_defaults() {
        let sinks = parse(&format!(
            r#"
            [[sinks]]
            name = "nightly"
            kind = "http"
            url = "https://evals.internal/hook"
            secret = "{SECRET}"
            [sinks.filter]
            types = ["batch.*", "interaction.requires_action"]
            metadata = {{ job_group = "nightly-eval", run = 7 }}

            [[sinks]]
            name = "bus"
            kind = "nats"
            stream = "GEMINI"

            [[sinks]]
            name = "audit"
            kind = "handler"
            "#
        ));

        let SinkConfig::Http(nightly) = &sinks[0] else {
            panic!("not http: {:?}", sinks[0]);
        };
        assert_eq!(nightly.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(nightly.inline_max_bytes, DEFAULT_INLINE_MAX_BYTES);
        assert_eq!(
            nightly.filter,
            filter(
                &["batch.*", "interaction.requires_action"],
                json!({"job_group": "nightly-eval", "run": 7})
            )
        );
        let SinkConfig::Nats(bus) = &sinks[1] else {
            panic!("not nats: {:?}", sinks[1]);
        };
        assert_eq!(bus.url, DEFAULT_NATS_URL);
        assert_eq!(bus.subject, DEFAULT_SUBJECT);
        assert_eq!(bus.stream.as_deref(), Some("GEMINI"));
        assert_eq!(sinks[2].kind(), "handler");
        assert_eq!(sinks[2].filter(), &Filter::default());
        validate(&sinks).unwrap();
    }

    #[test]
    fn an_unknown_key_or_kind_is_refused() {
        let typo = figment::Figment::from(figment::providers::Toml::string(
            "[[sinks]]\nname = \"a\"\nkind = \"handler\"\nfliter = {}\n",
        ))
        .extract::<File>();
        let kind = figment::Figment::from(figment::providers::Toml::string(
            "[[sinks]]\nname = \"a\"\nkind = \"smtp\"\n",
        ))
        .extract::<File>();

        assert!(typo.is_err());
        assert!(kind.is_err());
    }

    #[test]
    fn debug_output_shows_neither_the_secret_nor_the_urls_credentials_or_path() {
        let SinkConfig::Http(mut config) = http("a") else {
            unreachable!()
        };
        config.url = "https://user:hunter2@evals.internal/hook?token=t0ken".into();

        let shown = format!("{config:?}");

        assert!(!shown.contains(&SECRET[6..]), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("https://evals.internal"), "{shown}");
    }

    #[test]
    fn an_empty_filter_matches_every_outcome() {
        assert!(Filter::default().matches_parts("batch.succeeded", None));
    }

    #[test]
    fn a_type_glob_matches_its_prefix_and_nothing_else() {
        let f = filter(&["batch.*"], json!({}));

        assert!(f.matches_parts("batch.succeeded", None));
        assert!(f.matches_parts("batch.failed", None));
        assert!(!f.matches_parts("batch", None));
        assert!(!f.matches_parts("batchy.succeeded", None));
        assert!(!f.matches_parts("interaction.completed", None));
    }

    #[test]
    fn exact_types_and_the_star_match_as_written() {
        let exact = filter(&["interaction.requires_action"], json!({}));
        let star = filter(&["*"], json!({}));

        assert!(exact.matches_parts("interaction.requires_action", None));
        assert!(!exact.matches_parts("interaction.completed", None));
        assert!(star.matches_parts("video.generated", None));
    }

    #[test]
    fn every_metadata_key_must_match_as_text() {
        let f = filter(&[], json!({"job_group": "nightly-eval", "run": 7}));

        assert!(f.matches_parts(
            "batch.succeeded",
            Some(&json!({"job_group": "nightly-eval", "run": "7", "extra": 1}))
        ));
        assert!(f.matches_parts(
            "batch.succeeded",
            Some(&json!({"job_group": "nightly-eval", "run": 7}))
        ));
        assert!(!f.matches_parts(
            "batch.succeeded",
            Some(&json!({"job_group": "other", "run": 7}))
        ));
    }

    #[test]
    fn a_missing_key_or_missing_metadata_is_no_match() {
        let f = filter(&[], json!({"job_group": "nightly-eval"}));

        assert!(!f.matches_parts("batch.succeeded", Some(&json!({"run": 7}))));
        assert!(!f.matches_parts("batch.succeeded", None));
        assert!(!f.matches_parts("batch.succeeded", Some(&json!({"job_group": null}))));
    }

    #[test]
    fn types_and_metadata_must_both_match() {
        let f = filter(&["batch.*"], json!({"job_group": "nightly-eval"}));
        let nightly = json!({"job_group": "nightly-eval"});

        assert!(f.matches_parts("batch.succeeded", Some(&nightly)));
        assert!(!f.matches_parts("video.generated", Some(&nightly)));
    }

    #[test]
    fn a_filter_matches_an_outcome_by_its_type_and_user_metadata() {
        let outcome = crate::deliver::outcome::tests::sample();

        assert!(filter(&["batch.*"], json!({"job_group": "nightly-eval"})).matches(&outcome));
        assert!(!filter(&["video.*"], json!({})).matches(&outcome));
    }

    #[test]
    fn the_template_puts_the_event_type_in_the_subject() {
        let template = SubjectTemplate::parse("gemini.{type}").unwrap();

        assert_eq!(
            template.render("batch.succeeded").as_deref(),
            Some("gemini.batch.succeeded")
        );
        assert_eq!(template.stream_subject().as_deref(), Some("gemini.>"));
    }

    #[test]
    fn a_template_with_the_type_inside_or_without_it_renders_too() {
        let inside = SubjectTemplate::parse("apps.{type}.done").unwrap();
        let fixed = SubjectTemplate::parse("apps.gemini").unwrap();

        assert_eq!(
            inside.render("video.generated").as_deref(),
            Some("apps.video.generated.done")
        );
        assert_eq!(inside.stream_subject(), None);
        assert_eq!(fixed.render("x").as_deref(), Some("apps.gemini"));
        assert_eq!(fixed.stream_subject().as_deref(), Some("apps.gemini"));
        assert_eq!(
            SubjectTemplate::parse("gemini{type}")
                .unwrap()
                .stream_subject(),
            None
        );
    }

    #[test]
    fn an_event_type_that_would_make_a_bad_subject_is_not_rendered() {
        let template = SubjectTemplate::parse("gemini.{type}").unwrap();

        assert_eq!(template.render("batch.>"), None);
        assert_eq!(template.render("batch succeeded"), None);
        assert_eq!(template.render("batch..x"), None);
    }

    #[test]
    fn unknown_variables_and_malformed_templates_are_refused() {
        assert_eq!(
            SubjectTemplate::parse("gemini.{kind}"),
            Err(TemplateProblem::UnknownVariable("kind".into()))
        );
        assert!(matches!(
            SubjectTemplate::parse("gemini.{type"),
            Err(TemplateProblem::Malformed(_))
        ));
        assert!(matches!(
            SubjectTemplate::parse("gemini.type}"),
            Err(TemplateProblem::Malformed(_))
        ));
        assert!(matches!(
            SubjectTemplate::parse("gemini.>"),
            Err(TemplateProblem::Malformed(_))
        ));
        assert!(matches!(
            SubjectTemplate::parse(""),
            Err(TemplateProblem::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let error = validate(&[http("a"), nats("a", DEFAULT_SUBJECT)]).unwrap_err();

        assert!(matches!(error, SinkConfigError::DuplicateName { name } if name == "a"));
    }

    #[test]
    fn a_bad_url_is_refused_by_sink_name_without_echoing_it() {
        let SinkConfig::Http(mut config) = http("nightly") else {
            unreachable!()
        };
        config.url = "ftp://secret-host/x".into();

        let error = validate(&[SinkConfig::Http(config)]).unwrap_err();

        assert!(matches!(error, SinkConfigError::InvalidUrl { .. }));
        let text = error.to_string();
        assert!(
            text.contains("nightly") && !text.contains("secret-host"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_secret_is_refused_by_sink_name_without_echoing_it() {
        let SinkConfig::Http(mut config) = http("nightly") else {
            unreachable!()
        };
        config.secret = Redacted::new("whsec_sup3r-s3cret!");

        let error = validate(&[SinkConfig::Http(config)]).unwrap_err();

        assert!(matches!(error, SinkConfigError::InvalidSecret { .. }));
        let text = format!("{error} {error:?}");
        assert!(
            text.contains("nightly") && !text.contains("sup3r"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_template_variable_is_named() {
        let error = validate(&[nats("bus", "gemini.{typ}")]).unwrap_err();

        assert!(matches!(
            error,
            SinkConfigError::UnknownTemplateVariable { name, variable } if name == "bus" && variable == "typ"
        ));
    }

    #[test]
    fn bad_type_patterns_metadata_values_timeouts_and_stream_names_are_refused() {
        let with_filter = |types: &[&str], metadata: Value| {
            let SinkConfig::Http(mut config) = http("a") else {
                unreachable!()
            };
            config.filter = filter(types, metadata);
            SinkConfig::Http(config)
        };
        let SinkConfig::Http(mut no_time) = http("a") else {
            unreachable!()
        };
        no_time.timeout_secs = 0;
        let SinkConfig::Nats(mut bad_stream) = nats("a", DEFAULT_SUBJECT) else {
            unreachable!()
        };
        bad_stream.stream = Some("GEMINI.events".into());

        assert!(matches!(
            validate(&[with_filter(&["*.failed"], json!({}))]),
            Err(SinkConfigError::InvalidTypePattern { .. })
        ));
        assert!(matches!(
            validate(&[with_filter(&[], json!({"tags": ["a"]}))]),
            Err(SinkConfigError::InvalidMetadataValue { .. })
        ));
        assert!(matches!(
            validate(&[SinkConfig::Http(no_time)]),
            Err(SinkConfigError::ZeroTimeout { .. })
        ));
        assert!(matches!(
            validate(&[SinkConfig::Nats(bad_stream)]),
            Err(SinkConfigError::InvalidStreamName { .. })
        ));
    }

    #[test]
    fn a_sink_retries_for_a_day_by_default_and_takes_its_own_schedule() {
        let sinks = parse(
            r#"
            [[sinks]]
            name = "default"
            kind = "handler"

            [[sinks]]
            name = "own"
            kind = "handler"
            [sinks.retry]
            schedule_secs = [1, 60]

            [[sinks]]
            name = "capped"
            kind = "handler"
            [sinks.retry]
            max_attempts = 2
            "#,
        );
        validate(&sinks).unwrap();
        assert_eq!(sinks[0].retry_policy(), RetryPolicy::sink_default());
        assert!(sinks[0].retry_policy().shortest_span() >= Duration::from_secs(24 * 3600));
        assert_eq!(sinks[1].retry_policy(), RetryPolicy::schedule(3, &[1, 60]));
        assert_eq!(
            sinks[2].retry_policy(),
            RetryPolicy::schedule(2, &SINK_SCHEDULE_SECS)
        );
    }

    #[test]
    fn a_sinks_retry_settings_out_of_range_are_refused_by_name() {
        for retry in [
            "max_attempts = 0",
            "schedule_secs = []",
            "schedule_secs = [5, 99999999]",
        ] {
            let sinks = parse(&format!(
                "[[sinks]]\nname = \"app\"\nkind = \"handler\"\n[sinks.retry]\n{retry}\n"
            ));
            let error = validate(&sinks).unwrap_err().to_string();
            assert!(
                error.starts_with("sink \"app\": retry:"),
                "{retry}: {error}"
            );
        }
    }
}
