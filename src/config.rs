//! Configuration: embedded defaults (`config/default.toml`) → an optional file → environment.
//!
//! Loaded and validated once at start-up; a bad value stops the process with a message that
//! names the key (and, for secrets, the position), never the secret itself.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Deserializer};

pub use crate::redact::Redacted;
pub use crate::telemetry::LogFormat;
use crate::verify::{Keys, Policy, PublicKey, PublicKeyError, SecretError, WebhookSecret};
use crate::worker::WorkerSettings;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// The console's address when `admin_listen` is not set: loopback only.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8081,
));

/// Where the console listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// `admin_listen` is empty.
    Off,
    /// Not set: the default. A second replica on the same host finds it taken and runs
    /// without a console rather than failing to start.
    Default(SocketAddr),
    /// Set: failing to bind it stops start-up.
    Configured(SocketAddr),
}

impl AdminListen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::Default(addr) | AdminListen::Configured(addr) => Some(addr),
        }
    }
}

/// Where gemhook keeps its state when no database URL is given: an embedded SQLite file,
/// created (with its folder) on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/gemhook.db";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("webhook secret #{position} of {count} is invalid: {reason}")]
    Secret {
        position: usize,
        count: usize,
        reason: SecretError,
    },
    #[error("public key #{position} of {count} is invalid: {reason}")]
    PublicKey {
        position: usize,
        count: usize,
        reason: PublicKeyError,
    },
    #[error("sinks: {0}")]
    Sinks(#[from] crate::deliver::SinkConfigError),
    #[error("retention_days: {0}")]
    Retention(#[from] crate::retention::RetentionError),
    #[error("jwks_url is not a valid http(s) URL")]
    JwksUrl,
    #[error("unknown key `{key}` in {}{hint}", file.display())]
    UnknownKey {
        key: String,
        file: std::path::PathBuf,
        hint: String,
    },
    #[error("{key} = {value} is out of range: it must be {range} ({unit})")]
    OutOfRange {
        key: &'static str,
        value: u64,
        range: String,
        unit: &'static str,
    },
    #[error(
        "admin_listen is {0:?}: use host:port (e.g. 127.0.0.1:8081), or an empty value to turn the console off"
    )]
    AdminListen(String),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminConfigError),
    #[error(
        "max_inflight_body_bytes ({inflight}) must be at least max_body_bytes ({body}), or no delivery of the largest size could ever be read"
    )]
    InflightBelowBody { inflight: usize, body: usize },
}

/// A numeric setting's allowed range, inclusive.
struct Range {
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
    unit: &'static str,
}

impl Range {
    fn check(&self) -> Result<(), ConfigError> {
        if (self.min..=self.max).contains(&self.value) {
            return Ok(());
        }
        let range = if self.max == u64::MAX {
            format!("at least {}", self.min)
        } else {
            format!("from {} to {}", self.min, self.max)
        };
        Err(ConfigError::OutOfRange {
            key: self.key,
            value: self.value,
            range,
            unit: self.unit,
        })
    }
}

/// The settings as written; see `config/default.toml` for what each key means. Unknown keys
/// are refused (a typo must not silently leave a default in force).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The console and admin API's address; unset: 127.0.0.1:8081; empty: off.
    #[serde(default)]
    pub admin_listen: Option<String>,
    #[serde(default)]
    pub admin_token: Option<Redacted>,
    #[serde(default)]
    pub database_url: Option<Redacted>,
    /// A direct (not pooled) URL for `LISTEN`, when `database_url` goes through a pooler in
    /// transaction mode, which cannot keep a session's subscriptions.
    #[serde(default)]
    pub database_listen_url: Option<Redacted>,
    #[serde(deserialize_with = "comma_separated")]
    pub webhook_secrets: Vec<Redacted>,
    pub timestamp_tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub auto_migrate: bool,
    pub database_max_connections: u32,
    pub database_acquire_timeout_ms: u64,
    pub group_commit_writers: usize,
    pub group_commit_max_batch: usize,
    pub group_commit_max_batch_bytes: usize,
    pub ack_deadline_ms: u64,
    pub max_inflight_body_bytes: usize,
    pub header_read_timeout_secs: u64,
    pub body_read_timeout_secs: u64,
    pub max_connections: usize,
    pub retention_days: u64,
    pub prune_interval_secs: u64,
    pub shutdown_grace_secs: u64,
    #[serde(deserialize_with = "comma_separated")]
    pub public_keys: Vec<Redacted>,
    pub dynamic_webhooks: bool,
    pub jwks_url: String,
    pub jwks_ttl_secs: u64,
    pub jwks_min_refresh_secs: u64,
    pub accept_jwt: bool,
    /// Start on a public address with no project secret: only per-job webhooks signed with
    /// Google's keys are expected.
    pub dynamic_webhooks_only: bool,
    #[serde(default)]
    pub jwt_audience: Option<String>,
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    pub worker_concurrency: usize,
    pub poll_interval_ms: u64,
    pub max_attempts: i32,
    pub worker_lease_secs: u64,
    #[serde(default)]
    pub gemini_api_key: Option<Redacted>,
    pub gemini_base_url: String,
    #[serde(deserialize_with = "comma_separated")]
    pub allowed_hosts: Vec<String>,
    pub gemini_connect_timeout_secs: u64,
    pub gemini_read_timeout_secs: u64,
    /// How often `serve` reads the Gemini webhooks' states (0: never).
    pub webhook_watch_interval_secs: u64,
    pub results_dir: std::path::PathBuf,
    #[serde(default)]
    pub results_url: Option<String>,
    /// Where finished outcomes are handed off (`[[sinks]]` in the file; see `deliver::sinks`).
    #[serde(default)]
    pub sinks: Vec<crate::deliver::SinkConfig>,
    /// What loading noticed but did not refuse (unknown `GEMHOOK_*` variables), for the caller
    /// to log once logging is up.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Whether a CLI command may create the embedded database when it is missing (`--create`;
    /// `serve` and `migrate` always may). Not a setting: a per-invocation choice.
    #[serde(skip)]
    pub create_database: bool,
}

/// `GEMHOOK_*` variables that are not settings: read by commands themselves, by the tests or
/// by the benchmark scripts. Not warned about.
const NON_SETTING_VARIABLES: &[&str] = &[
    "GEMHOOK_CONFIG",
    "GEMHOOK_SEND_SECRET",
    "GEMHOOK_SEND_SIGNING_KEY",
    "GEMHOOK_BIN",
    "GEMHOOK_PORT",
    "GEMHOOK_ROLE",
];
const NON_SETTING_PREFIXES: &[&str] = &["GEMHOOK_TEST_", "GEMHOOK_BENCH_", "GEMHOOK_FAULTS_"];

/// Every key [`Settings`] reads, taken from its serde definition so the list cannot drift.
pub fn known_keys() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<Settings>()
}

/// The known key nearest to `key`, when one is near enough to be a likely typo.
pub fn nearest_key(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    known_keys()
        .iter()
        .map(|known| (strsim::levenshtein(&key, known), *known))
        .filter(|(distance, known)| *distance <= 3.max(known.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn did_you_mean(suggestion: Option<&str>, render: impl Fn(&str) -> String) -> String {
    suggestion
        .map(|known| format!("; did you mean {}?", render(known)))
        .unwrap_or_default()
}

/// Keys in a configuration file that gemhook does not know.
fn check_file_keys(file: &Path) -> Result<(), ConfigError> {
    use figment::Provider as _;
    let data = Toml::file_exact(file).data().map_err(Box::new)?;
    for dict in data.values() {
        for key in dict.keys() {
            if !known_keys().contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    file: file.to_owned(),
                    hint: did_you_mean(nearest_key(key), |k| format!("`{k}`")),
                });
            }
        }
    }
    Ok(())
}

/// Warnings for `GEMHOOK_*` variables in `vars` that name no setting.
pub fn unknown_variables(vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut warnings: Vec<String> = vars
        .filter_map(|(name, _value)| {
            let key = name.strip_prefix("GEMHOOK_")?.to_ascii_lowercase();
            let known = known_keys().contains(&key.as_str())
                || NON_SETTING_VARIABLES.contains(&name.as_str())
                || NON_SETTING_PREFIXES.iter().any(|p| name.starts_with(p));
            (!known).then(|| {
                let hint = did_you_mean(nearest_key(&key), |k| {
                    format!("`GEMHOOK_{}`", k.to_ascii_uppercase())
                });
                format!("{name} is not a gemhook setting and is ignored{hint}")
            })
        })
        .collect();
    warnings.sort();
    warnings
}

impl Settings {
    /// The built-in defaults alone, with no file and no environment: what tests start from.
    pub fn defaults() -> Figment {
        Figment::from(Toml::string(DEFAULTS))
    }

    /// The layered sources, without extracting them.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Self::defaults();
        // PORT is how Cloud Run, Heroku and others say where to listen: all interfaces on it,
        // unless the file or GEMHOOK_LISTEN says otherwise.
        if let Some(port) = std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            figment = figment.merge(("listen", format!("0.0.0.0:{port}")));
        }
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            // DATABASE_URL and GEMINI_API_KEY are the conventions of most platforms and of
            // Google's SDKs; the GEMHOOK_ names win when both are set.
            .merge(Env::raw().only(&["DATABASE_URL", "GEMINI_API_KEY"]))
            // Only settings: other GEMHOOK_ variables are warned about, not refused, since
            // the environment is shared with other tools.
            .merge(
                Env::prefixed("GEMHOOK_")
                    .filter(|key| known_keys().iter().any(|known| key == *known)),
            )
    }

    /// Loads defaults → file → environment and validates. A key the file does not know is
    /// refused; an unknown `GEMHOOK_*` variable becomes a warning in [`Settings::warnings`].
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        if let Some(file) = file {
            check_file_keys(file)?;
        }
        let mut settings = Self::from_figment(Self::figment(file))?;
        settings.warnings = unknown_variables(std::env::vars());
        Ok(settings)
    }

    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.check_ranges()?;
        settings.keys()?;
        settings.retention()?;
        crate::deliver::validate(&settings.sinks)?;
        crate::deliver::check_timeouts_within(
            &settings.sinks,
            Duration::from_secs(settings.worker_lease_secs),
        )?;
        if settings.dynamic_webhooks {
            settings.jwks_url()?;
        }
        settings.admin_auth([0; 32])?;
        Ok(settings)
    }

    /// Every numeric setting against its range, so a zero that would panic or stall (a batch
    /// of 0 rows, a pool of 0 connections) stops start-up with the key's name instead.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        // key, value, min, max (inclusive), unit
        const DAY_SECS: u64 = 24 * 3600;
        let n = |value: usize| value as u64;
        #[rustfmt::skip]
        let ranges: [(&str, u64, u64, u64, &str); 23] = [
            ("timestamp_tolerance_secs", self.timestamp_tolerance_secs, 1, DAY_SECS, "seconds"),
            ("max_body_bytes", n(self.max_body_bytes), 1024, 256 << 20, "bytes"),
            ("database_max_connections", u64::from(self.database_max_connections), 1, 10_000, "connections"),
            ("database_acquire_timeout_ms", self.database_acquire_timeout_ms, 1, 600_000, "milliseconds"),
            ("group_commit_writers", n(self.group_commit_writers), 0, 64, "writer tasks; 0 turns group commit off"),
            ("group_commit_max_batch", n(self.group_commit_max_batch), 1, 10_000, "deliveries"),
            ("group_commit_max_batch_bytes", n(self.group_commit_max_batch_bytes), 1024, 1 << 30, "bytes"),
            ("ack_deadline_ms", self.ack_deadline_ms, 100, 60_000, "milliseconds"),
            ("max_inflight_body_bytes", n(self.max_inflight_body_bytes), 1024, 1 << 40, "bytes"),
            ("header_read_timeout_secs", self.header_read_timeout_secs, 1, 3600, "seconds"),
            ("body_read_timeout_secs", self.body_read_timeout_secs, 1, 3600, "seconds"),
            ("max_connections", n(self.max_connections), 1, 1_000_000, "connections"),
            ("prune_interval_secs", self.prune_interval_secs, 1, 7 * DAY_SECS, "seconds"),
            ("shutdown_grace_secs", self.shutdown_grace_secs, 0, 3600, "seconds"),
            ("jwks_ttl_secs", self.jwks_ttl_secs, 1, 7 * DAY_SECS, "seconds"),
            ("jwks_min_refresh_secs", self.jwks_min_refresh_secs, 1, DAY_SECS, "seconds"),
            ("worker_concurrency", n(self.worker_concurrency), 1, 10_000, "jobs at once"),
            ("poll_interval_ms", self.poll_interval_ms, 1, 3_600_000, "milliseconds"),
            ("max_attempts", u64::try_from(self.max_attempts).unwrap_or(0), 1, 1000, "attempts"),
            ("worker_lease_secs", self.worker_lease_secs, 1, DAY_SECS, "seconds"),
            ("gemini_connect_timeout_secs", self.gemini_connect_timeout_secs, 1, 600, "seconds"),
            ("gemini_read_timeout_secs", self.gemini_read_timeout_secs, 1, 3600, "seconds"),
            ("webhook_watch_interval_secs", self.webhook_watch_interval_secs, 0, DAY_SECS, "seconds; 0 turns the watcher off"),
        ];
        for (key, value, min, max, unit) in ranges {
            Range {
                key,
                value,
                min,
                max,
                unit,
            }
            .check()?;
        }
        if self.max_inflight_body_bytes < self.max_body_bytes {
            return Err(ConfigError::InflightBelowBody {
                inflight: self.max_inflight_body_bytes,
                body: self.max_body_bytes,
            });
        }
        Ok(())
    }

    /// The ack path's limits for the group-commit writer.
    pub fn batch_limits(&self) -> crate::store::BatchLimits {
        crate::store::BatchLimits {
            max_rows: self.group_commit_max_batch,
            max_bytes: self.group_commit_max_batch_bytes,
            deadline: self.ack_deadline(),
        }
    }

    pub fn ack_deadline(&self) -> Duration {
        Duration::from_millis(self.ack_deadline_ms)
    }

    /// The URL `LISTEN` connects to, when it is not the main one.
    /// Where the console listens, if it is on.
    pub fn admin_listen(&self) -> Result<AdminListen, ConfigError> {
        match self.admin_listen.as_deref().map(str::trim) {
            None => Ok(AdminListen::Default(DEFAULT_ADMIN_LISTEN)),
            Some("") => Ok(AdminListen::Off),
            Some(text) => text
                .parse()
                .map(AdminListen::Configured)
                .map_err(|_| ConfigError::AdminListen(text.to_owned())),
        }
    }

    /// The console's credentials, checked against its listeners (the console's and
    /// `metrics_listen`): without a token both must be loopback. `random_key` signs this
    /// process's CSRF tokens when there is no token.
    pub fn admin_auth(&self, random_key: [u8; 32]) -> Result<crate::admin::AdminAuth, ConfigError> {
        let mut listeners = Vec::new();
        if let Some(addr) = self.admin_listen()?.addr() {
            listeners.push(("admin_listen", addr));
        }
        if let Some(addr) = self.metrics_listen {
            listeners.push(("metrics_listen", addr));
        }
        let token = self.admin_token.clone().filter(|t| !t.expose().is_empty());
        Ok(crate::admin::AdminAuth::new(token, &listeners, random_key)?)
    }

    pub fn database_listen_url(&self) -> Option<&str> {
        self.database_listen_url
            .as_ref()
            .map(Redacted::expose)
            .filter(|url| !url.is_empty())
    }

    /// The database URL: the configured one, else the embedded SQLite file.
    pub fn database_url(&self) -> Result<&str, ConfigError> {
        Ok(self
            .database_url
            .as_ref()
            .map(Redacted::expose)
            .filter(|url| !url.is_empty())
            .unwrap_or(DEFAULT_DATABASE_URL))
    }

    /// The verification keys, parsed from the configured secrets.
    pub fn keys(&self) -> Result<Keys, ConfigError> {
        let count = self.webhook_secrets.len();
        let secrets = self
            .webhook_secrets
            .iter()
            .enumerate()
            .map(|(index, text)| {
                WebhookSecret::parse(text.expose()).map_err(|reason| ConfigError::Secret {
                    position: index + 1,
                    count,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = self.public_keys.len();
        let public_keys = self
            .public_keys
            .iter()
            .enumerate()
            .map(|(index, text)| {
                PublicKey::parse(text.expose()).map_err(|reason| ConfigError::PublicKey {
                    position: index + 1,
                    count,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Keys {
            secrets,
            public_keys,
        })
    }

    /// Where Google's key set is fetched from (only meaningful with `dynamic_webhooks`).
    pub fn jwks_url(&self) -> Result<reqwest::Url, ConfigError> {
        reqwest::Url::parse(&self.jwks_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or(ConfigError::JwksUrl)
    }

    pub fn policy(&self) -> Policy {
        Policy {
            tolerance_secs: self.timestamp_tolerance_secs,
            accept_jwt: self.accept_jwt,
            jwt_audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            jwt_issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
        }
    }

    pub fn database_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.database_acquire_timeout_ms)
    }

    pub fn worker(&self) -> WorkerSettings {
        WorkerSettings {
            concurrency: self.worker_concurrency.max(1),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
            lease: Duration::from_secs(self.worker_lease_secs.max(1)),
            max_attempts: self.max_attempts.max(1),
            shutdown_grace: self.shutdown_grace(),
        }
    }

    /// The API key, when one is configured (an empty value counts as none).
    pub fn gemini_api_key(&self) -> Option<&str> {
        self.gemini_api_key
            .as_ref()
            .map(Redacted::expose)
            .filter(|key| !key.is_empty())
    }

    /// How long finished events are kept (at least two days).
    pub fn retention(&self) -> Result<Duration, ConfigError> {
        let age = Duration::from_secs(self.retention_days.saturating_mul(24 * 3600));
        Ok(crate::retention::check(age)?)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Keys whose values are secret: `gemhook config check` shows only that they are set.
const SECRET_KEYS: &[&str] = &["webhook_secrets", "gemini_api_key", "admin_token", "sinks"];

/// One line of `gemhook config check`: a key, its effective value (secrets redacted) and where
/// that value came from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provenance {
    pub key: &'static str,
    pub value: serde_json::Value,
    pub source: String,
}

/// The effective configuration, key by key, as [`Settings::load`] would see it.
pub fn provenance(file: Option<&Path>) -> Result<Vec<Provenance>, ConfigError> {
    let figment = Settings::figment(file);
    let mut lines = Vec::new();
    for key in known_keys() {
        let Ok(value) = figment.find_value(key) else {
            lines.push(Provenance {
                key,
                value: serde_json::Value::Null,
                source: "unset".into(),
            });
            continue;
        };
        let source = match value.tag().profile().and(figment.get_metadata(value.tag())) {
            Some(metadata) => match &metadata.source {
                Some(figment::Source::File(path)) => format!("file {}", path.display()),
                _ if metadata.name.contains("GEMHOOK_") => {
                    format!("environment GEMHOOK_{}", key.to_ascii_uppercase())
                }
                _ if metadata.name.contains("environment") => {
                    format!("environment {}", key.to_ascii_uppercase())
                }
                _ if metadata.name.contains("TOML source string") => "built-in default".into(),
                _ => metadata.name.to_string(),
            },
            None => "built-in default".into(),
        };
        let value = value
            .deserialize::<serde_json::Value>()
            .unwrap_or(serde_json::Value::Null);
        let value = if SECRET_KEYS.contains(key) {
            redact_value(&value)
        } else if *key == "database_url" || *key == "database_listen_url" {
            value
                .as_str()
                .map(|url| serde_json::Value::String(redact_url(url)))
                .unwrap_or(value)
        } else {
            value
        };
        lines.push(Provenance { key, value, source });
    }
    Ok(lines)
}

/// "<redacted: N set>" for a list, "<redacted>" for a value, nothing for empty ones.
fn redact_value(value: &serde_json::Value) -> serde_json::Value {
    let text = match value {
        serde_json::Value::Array(items) if items.is_empty() => return value.clone(),
        serde_json::Value::String(text) if text.is_empty() => return value.clone(),
        serde_json::Value::Array(items) => format!("<redacted: {} set>", items.len()),
        serde_json::Value::String(text) => {
            let count = text.split(',').filter(|s| !s.trim().is_empty()).count();
            format!("<redacted: {count} set>")
        }
        _ => "<redacted>".into(),
    };
    serde_json::Value::String(text)
}

/// A database URL with its password replaced.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("<redacted>"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Accepts a list, or one string of comma-separated items (the environment's form).
fn comma_separated<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .map(T::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Figment {
        Settings::defaults()
    }

    #[test]
    fn the_embedded_defaults_load() {
        let settings = Settings::from_figment(base()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.timestamp_tolerance_secs, 300);
        assert_eq!(settings.max_body_bytes, 1_048_576);
        assert!(settings.webhook_secrets.is_empty());
    }

    #[test]
    fn secrets_come_as_one_comma_separated_string() {
        let figment = base().merge((
            "webhook_secrets",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ));
        let settings = Settings::from_figment(figment).unwrap();
        assert_eq!(settings.keys().unwrap().secrets.len(), 2);
    }

    #[test]
    fn a_malformed_secret_is_named_by_position_and_never_echoed() {
        let figment = base().merge((
            "webhook_secrets",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_sup3r-s3cret!",
        ));
        let message = Settings::from_figment(figment).unwrap_err().to_string();
        assert!(message.contains("#2 of 2"), "{message}");
        assert!(!message.contains("sup3r"), "{message}");
    }

    #[test]
    fn a_numeric_setting_out_of_range_is_refused_with_its_key_and_unit() {
        for (key, value) in [
            ("group_commit_max_batch", 0),
            ("database_max_connections", 0),
            ("worker_concurrency", 0),
            ("max_attempts", 0),
            ("ack_deadline_ms", 10),
        ] {
            let message = Settings::from_figment(base().merge((key, value)))
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with(&format!("{key} = {value} is out of range")),
                "{message}"
            );
        }
        let message = Settings::from_figment(base().merge(("max_attempts", -3)))
            .unwrap_err()
            .to_string();
        assert!(message.contains("max_attempts"), "{message}");
        let message = Settings::from_figment(
            base()
                .merge(("max_body_bytes", 4_000_000))
                .merge(("max_inflight_body_bytes", 1_000_000)),
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("max_inflight_body_bytes"), "{message}");
    }

    #[test]
    fn the_webhook_watch_interval_may_be_zero_to_turn_it_off_but_not_above_a_day() {
        let off = Settings::from_figment(base().merge(("webhook_watch_interval_secs", 0))).unwrap();
        assert_eq!(off.webhook_watch_interval_secs, 0);
        assert_eq!(
            Settings::from_figment(base())
                .unwrap()
                .webhook_watch_interval_secs,
            300
        );
        let message = Settings::from_figment(base().merge(("webhook_watch_interval_secs", 86_401)))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("webhook_watch_interval_secs = 86401 is out of range"),
            "{message}"
        );
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused_with_the_nearest_known_name() {
        let dir = std::env::temp_dir().join(format!("gemhook-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("typo.toml");
        std::fs::write(&file, "listn = \"127.0.0.1:9000\"\n").unwrap();

        let message = Settings::load(Some(&file)).unwrap_err().to_string();

        assert_eq!(
            message,
            format!(
                "unknown key `listn` in {}; did you mean `listen`?",
                file.display()
            )
        );
        std::fs::write(&file, "webhook_secret = \"x\"\n").unwrap();
        let message = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(
            message.ends_with("did you mean `webhook_secrets`?"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_gemhook_variable_is_a_warning_with_the_nearest_name() {
        let vars = [
            ("GEMHOOK_WEBHOOK_SECRET", "x"),
            ("GEMHOOK_LISTEN", "127.0.0.1:1"),
            ("GEMHOOK_TEST_DATABASE_URL", "postgres://"),
            ("GEMHOOK_CONFIG", "a.toml"),
            ("GEMHOOK_ZZZZZZZZ", "1"),
            ("PATH", "/bin"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));

        let warnings = unknown_variables(vars.into_iter());

        assert_eq!(
            warnings,
            [
                "GEMHOOK_WEBHOOK_SECRET is not a gemhook setting and is ignored; did you mean `GEMHOOK_WEBHOOK_SECRETS`?",
                "GEMHOOK_ZZZZZZZZ is not a gemhook setting and is ignored",
            ]
        );
    }

    #[test]
    fn every_key_of_the_defaults_file_is_known_and_vice_versa_for_required_ones() {
        use figment::Provider as _;
        let data = Toml::string(DEFAULTS).data().unwrap();
        for key in data.values().flat_map(|dict| dict.keys()) {
            assert!(known_keys().contains(&key.as_str()), "{key}");
        }
        assert!(known_keys().contains(&"webhook_secrets"));
    }

    #[test]
    fn provenance_names_the_source_of_each_value_and_redacts_secrets() {
        let dir = std::env::temp_dir().join(format!("gemhook-prov-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gemhook.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nwebhook_secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\ndatabase_url = \"postgres://u:hunter2@db/x\"\nadmin_token = \"console-token-correct-horse\"\n",
        )
        .unwrap();

        let lines = provenance(Some(&file)).unwrap();

        let line = |key: &str| lines.iter().find(|l| l.key == key).unwrap().clone();
        assert_eq!(line("listen").value, "127.0.0.1:9000");
        assert_eq!(line("listen").source, format!("file {}", file.display()));
        assert_eq!(line("max_body_bytes").source, "built-in default");
        assert_eq!(line("webhook_secrets").value, "<redacted: 1 set>");
        assert_eq!(line("admin_token").value, "<redacted: 1 set>");
        assert_eq!(
            line("database_url").value,
            "postgres://u:%3Credacted%3E@db/x"
        );
        let printed = serde_json::to_string(&lines).unwrap();
        assert!(!printed.contains("MfKQ9r8") && !printed.contains("hunter2"));
        assert!(!printed.contains("correct-horse"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_database_url_is_redacted_in_debug_output() {
        let figment = base().merge(("database_url", "postgres://u:hunter2@db/x"));
        let settings = Settings::from_figment(figment).unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
        assert_eq!(
            settings.database_url().unwrap(),
            "postgres://u:hunter2@db/x"
        );
    }
}
