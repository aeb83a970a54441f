//! `gemhook dev`: the whole path on one machine, without a Google account.
//!
//! Starts the Gemini stand-in ([`super::gemini_dev`]) and a full gemhook (receiver, worker,
//! hand-off, like `gemhook serve`) wired to it: the stand-in is the worker's Gemini base URL,
//! both share [`DEV_API_KEY`], and a built-in handler sink prints every outcome to the
//! terminal. `gemhook send <type>` against it then ends in a stored result and a printed
//! outcome.
//!
//! What the session changes in the loaded configuration, and why:
//! - its own database and results (`./data/dev/`), never `GEMHOOK_DATABASE_URL`: a worker
//!   there would claim that database's real jobs and follow them to the stand-in;
//! - the Gemini base URL, the key and no extra allowed hosts: neither a real key nor a real
//!   host is ever used;
//! - no dynamic webhooks: nothing contacts Google (configured `whpk_` keys still verify `v1a`);
//! - a webhook secret generated for the session when none is configured.
//!
//! `--gemini-only` (hidden) runs the stand-in alone, for bench/run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::gemini_dev::{DEV_API_KEY, GeminiStandIn, StandInError, StandInSettings};
use crate::config::{Redacted, Settings};
use crate::deliver::sinks::{DEFAULT_INLINE_MAX_BYTES, HandlerSinkConfig};
use crate::deliver::{
    BoxFuture, Filter, Handler, HandlerError, Outcome, OutcomeState, SinkConfig, SinkConfigError,
};
use crate::http::WEBHOOK_PATH;
use crate::startup::{self, StartupError};
use crate::tools::send::{DEFAULT_SECRET_BYTES, SendError, generate_secret};

/// Where the stand-in listens by default: next to gemhook's 8080, and fixed, so the banner's
/// URLs stay the same from one session to the next.
pub const DEFAULT_GEMINI_LISTEN: &str = "127.0.0.1:8090";
/// The session's database unless `--database-url` names another.
pub const DEV_DATABASE_URL: &str = "sqlite://./data/dev/gemhook.db";
/// The session's results directory.
pub const DEV_RESULTS_DIR: &str = "./data/dev/results";
/// The name of the built-in sink that prints outcomes.
pub const TERMINAL_SINK: &str = "dev-terminal";
/// What every printed outcome line starts with, so it stands out among the logs.
pub const OUTCOME_PREFIX: &str = "[gemhook dev] outcome";

/// `gemhook dev [--listen ADDR] [--gemini-listen ADDR] [--database-url URL]`
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where gemhook listens [default: the configured listen, 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where the Gemini stand-in listens: a loopback address (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_GEMINI_LISTEN, value_name = "ADDR")]
    pub gemini_listen: SocketAddr,
    /// The session's database [default: sqlite://./data/dev/gemhook.db]. GEMHOOK_DATABASE_URL
    /// is deliberately not used: the dev worker would claim that database's real jobs.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<Redacted>,
    /// Run only the Gemini stand-in (bench/run's download source). Its key is GEMINI_API_KEY
    /// when set, else the development key.
    #[arg(long, hide = true)]
    pub gemini_only: bool,
    /// With --gemini-only: every batch results file is this many generated 1 KiB lines.
    #[arg(long, hide = true, requires = "gemini_only", value_name = "LINES")]
    pub batch_lines: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("the Gemini stand-in could not start (another address: --gemini-listen)")]
    StandIn(#[from] StandInError),
    #[error("the built-in {TERMINAL_SINK} sink cannot be added to the configured sinks")]
    Sinks(#[from] SinkConfigError),
    #[error("a webhook secret could not be generated for the session")]
    Secret(#[from] SendError),
    #[error("the development webhook secret could not be kept in {}", path.display())]
    DevSecret {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gemhook could not start")]
    Startup(#[from] StartupError),
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
}

/// Where the session's webhook secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSecret {
    /// Configured (file or environment): not printed, the user has it.
    Configured,
    /// Generated once, kept beside the dev database, and printed so `gemhook send` can use it.
    Generated(String),
}

/// Runs `gemhook dev` until SIGTERM or SIGINT.
pub async fn run(settings: Settings, args: DevArgs) -> Result<(), DevError> {
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        startup::shutdown_signal().await;
        trigger.cancel();
    });
    if args.gemini_only {
        return run_gemini_only(&settings, &args, stop).await;
    }
    let stand_in = GeminiStandIn::bind(
        args.gemini_listen,
        StandInSettings {
            api_key: Redacted::new(DEV_API_KEY),
            batch_lines: None,
        },
    )
    .await?;
    let secret = if settings.webhook_secrets.is_empty() {
        // The same development secret on every run, kept beside the dev database (as
        // `gemhook serve` keeps its own), so a command copied from an earlier banner works.
        let path = crate::dev_secret::path_for(DEV_DATABASE_URL);
        let (text, _created) = crate::dev_secret::load_or_create(&path, || {
            generate_secret(DEFAULT_SECRET_BYTES).unwrap_or_default()
        })
        .map_err(|source| DevError::DevSecret { path, source })?;
        SessionSecret::Generated(text)
    } else {
        SessionSecret::Configured
    };
    let settings = session_settings(settings, &args, stand_in.url(), &secret)?;
    let app = crate::Server::new(settings.clone())
        .handler(TERMINAL_SINK, TerminalSink)
        .build()
        .await?;
    let banner = Banner {
        gemhook: app.local_addr(),
        gemini: stand_in.url().to_owned(),
        database: display_database_url(settings.database_url().unwrap_or_default()),
        results: settings.results_dir.clone(),
        secret,
        program: program_name(),
    };
    println!("{banner}");
    let gemini = tokio::spawn(stand_in.run_until_stopped(stop.clone().cancelled_owned()));
    let served = app.run_until_stopped(stop.clone().cancelled_owned()).await;
    // If gemhook stopped on its own, the stand-in has nothing left to serve.
    stop.cancel();
    let _ = gemini.await;
    served.map_err(DevError::Serve)
}

async fn run_gemini_only(
    settings: &Settings,
    args: &DevArgs,
    stop: CancellationToken,
) -> Result<(), DevError> {
    let api_key = settings
        .gemini_api_key()
        .map(Redacted::new)
        .unwrap_or_else(|| Redacted::new(DEV_API_KEY));
    let stand_in = GeminiStandIn::bind(
        args.gemini_listen,
        StandInSettings {
            api_key,
            batch_lines: args.batch_lines,
        },
    )
    .await?;
    println!("Gemini stand-in: {}", stand_in.url());
    stand_in
        .run_until_stopped(stop.cancelled_owned())
        .await
        .map_err(DevError::Serve)
}

/// The loaded settings, changed as the module docs say.
pub fn session_settings(
    mut settings: Settings,
    args: &DevArgs,
    gemini_url: &str,
    secret: &SessionSecret,
) -> Result<Settings, DevError> {
    if let Some(listen) = args.listen {
        settings.listen = listen;
    }
    settings.database_url = Some(
        args.database_url
            .clone()
            .unwrap_or_else(|| Redacted::new(DEV_DATABASE_URL)),
    );
    settings.auto_migrate = true;
    settings.results_dir = PathBuf::from(DEV_RESULTS_DIR);
    settings.results_url = None;
    settings.gemini_base_url = gemini_url.to_owned();
    settings.gemini_api_key = Some(Redacted::new(DEV_API_KEY));
    settings.allowed_hosts.clear();
    settings.dynamic_webhooks = false;
    // The stand-in has no WebhookService: nothing to watch.
    settings.webhook_watch_interval_secs = 0;
    if let SessionSecret::Generated(text) = secret {
        settings.webhook_secrets = vec![Redacted::new(text.clone())];
    }
    settings.sinks.push(SinkConfig::Handler(HandlerSinkConfig {
        name: TERMINAL_SINK.to_owned(),
        inline_max_bytes: DEFAULT_INLINE_MAX_BYTES,
        timeout_secs: 10,
        retry: Default::default(),
        filter: Filter::default(),
    }));
    crate::deliver::validate(&settings.sinks)?;
    Ok(settings)
}

/// The built-in sink: one line per outcome on stdout.
struct TerminalSink;

impl Handler for TerminalSink {
    fn handle<'a>(&'a self, outcome: &'a Outcome) -> BoxFuture<'a, Result<(), HandlerError>> {
        let line = describe(outcome);
        Box::pin(async move {
            // A terminal that went away cannot be fixed by a retry: the delivery completes.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{line}");
            Ok(())
        })
    }
}

/// One line for a human: which event, what came of it, and where the result is.
pub fn describe(outcome: &Outcome) -> String {
    let resource = outcome.resource_id.as_deref().unwrap_or("-");
    let result = &outcome.result;
    let detail = match (outcome.state, result.outcome.as_deref()) {
        (OutcomeState::Discarded, _) => {
            let reason = outcome
                .error
                .as_ref()
                .and_then(|e| e.message.as_deref().or(e.code.as_deref()))
                .unwrap_or("no reason recorded");
            format!("dead-lettered: {reason} (`gemhook jobs show` has every attempt)")
        }
        (_, Some("stored")) => {
            let mut parts = vec![format!(
                "stored {}",
                human_bytes(result.size_bytes.unwrap_or(0))
            )];
            if let Some(lines) = result.lines {
                let errors = result.error_lines.unwrap_or(0);
                parts.push(format!("{lines} lines, {errors} with an error"));
            }
            if let Some(status) = &result.interaction_status {
                let hint = match status.as_str() {
                    "requires_action" => " (your application must act: a function call)",
                    _ => "",
                };
                parts.push(format!("status {status}{hint}"));
            }
            if let Some(location) = &result.location {
                parts.push(format!("at {location}"));
            }
            parts.join(", ")
        }
        (_, Some("recorded")) => match &outcome.error {
            Some(error) => format!(
                "recorded Gemini's error {}: {}",
                error.code.as_deref().unwrap_or("-"),
                error.message.as_deref().unwrap_or("-")
            ),
            None => "recorded (nothing to fetch)".to_owned(),
        },
        (_, Some("nothing")) => "nothing to follow (not a type gemhook fetches)".to_owned(),
        (_, other) => other.unwrap_or("no result").to_owned(),
    };
    format!(
        "{OUTCOME_PREFIX} {} {} {resource} → {}: {detail}",
        outcome.webhook_id,
        outcome.event_type,
        outcome.state.as_str()
    )
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A database URL without its password.
fn display_database_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `gemhook` when that name on the PATH is this very binary, else this binary's path, so the
/// printed commands run as they are (e.g. under `cargo run`).
fn program_name() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "gemhook".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("gemhook"))
            .any(|candidate| candidate.canonicalize().is_ok_and(|c| c == me))
    });
    if on_path {
        "gemhook".to_owned()
    } else {
        shell_word(&me)
    }
}

fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(|c: char| c.is_whitespace() || c == '\'') {
        format!("'{}'", text.replace('\'', r"'\''"))
    } else {
        text
    }
}

/// What `gemhook dev` prints once everything is bound.
struct Banner {
    gemhook: SocketAddr,
    gemini: String,
    database: String,
    results: PathBuf,
    secret: SessionSecret,
    program: String,
}

impl std::fmt::Display for Banner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let webhook = format!("http://{}{WEBHOOK_PATH}", self.gemhook);
        let secret = match &self.secret {
            SessionSecret::Generated(secret) => secret.as_str(),
            SessionSecret::Configured => "<your configured webhook secret>",
        };
        let p = &self.program;
        writeln!(
            f,
            "gemhook dev: gemhook and a local stand-in for Gemini, on this machine"
        )?;
        writeln!(f)?;
        writeln!(f, "  gemhook      http://{}", self.gemhook)?;
        writeln!(f, "  webhook URL  {webhook}")?;
        writeln!(
            f,
            "  Gemini       {} (stand-in; the worker's Gemini base URL)",
            self.gemini
        )?;
        writeln!(f, "  database     {}", self.database)?;
        writeln!(f, "  results      {}", self.results.display())?;
        match &self.secret {
            SessionSecret::Generated(secret) => {
                writeln!(f, "  secret       {secret} (generated for this session)")?
            }
            SessionSecret::Configured => writeln!(f, "  secret       the configured one")?,
        }
        writeln!(f)?;
        writeln!(f, "Try it, in another terminal:")?;
        writeln!(f)?;
        writeln!(
            f,
            "  {p} send batch.succeeded --url {webhook} --secret {secret}"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Every type works: batch.failed, interaction.requires_action, video.generated, ..."
        )?;
        writeln!(
            f,
            "Each finished event prints a line starting with \"{OUTCOME_PREFIX}\". Look closer:"
        )?;
        write!(f, "  GEMHOOK_DATABASE_URL={} {p} jobs list", self.database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::outcome::{ErrorOrigin, OutcomeError, OutcomeResult};

    fn args() -> DevArgs {
        DevArgs {
            listen: None,
            gemini_listen: DEFAULT_GEMINI_LISTEN.parse().unwrap(),
            database_url: None,
            gemini_only: false,
            batch_lines: None,
        }
    }

    fn loaded() -> Settings {
        Settings::from_figment(
            Settings::defaults()
                .merge(("database_url", "postgres://u:hunter2@prod/gemhook"))
                .merge(("gemini_api_key", "AIza-real-key"))
                .merge(("allowed_hosts", "videos.example")),
        )
        .unwrap()
    }

    fn outcome(state: OutcomeState, result: OutcomeResult) -> Outcome {
        Outcome {
            version: 1,
            webhook_id: "msg_1".into(),
            event_type: "batch.succeeded".into(),
            resource_kind: "batch".into(),
            resource_id: Some("batches/abc".into()),
            state,
            user_metadata: None,
            result,
            error: None,
            finished_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_session_never_uses_the_configured_database_key_or_hosts() {
        let secret = SessionSecret::Generated(generate_secret(32).unwrap());
        let settings =
            session_settings(loaded(), &args(), "http://127.0.0.1:8090", &secret).unwrap();
        assert_eq!(settings.database_url().unwrap(), DEV_DATABASE_URL);
        assert_eq!(settings.gemini_api_key(), Some(DEV_API_KEY));
        assert_eq!(settings.gemini_base_url, "http://127.0.0.1:8090");
        assert!(settings.allowed_hosts.is_empty());
        assert!(!settings.dynamic_webhooks);
        assert_eq!(settings.keys().unwrap().secrets.len(), 1);
        assert!(matches!(
            settings.sinks.last(),
            Some(SinkConfig::Handler(h)) if h.name == TERMINAL_SINK
        ));
    }

    #[test]
    fn a_configured_secret_is_kept_and_a_clashing_sink_name_is_refused() {
        let mut settings = Settings::from_figment(
            Settings::defaults()
                .merge(("webhook_secrets", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        )
        .unwrap();
        let kept = session_settings(
            settings.clone(),
            &args(),
            "http://127.0.0.1:1",
            &SessionSecret::Configured,
        )
        .unwrap();
        assert_eq!(kept.webhook_secrets, settings.webhook_secrets);
        settings.sinks.push(SinkConfig::Handler(HandlerSinkConfig {
            name: TERMINAL_SINK.into(),
            inline_max_bytes: 1,
            timeout_secs: 10,
            retry: Default::default(),
            filter: Filter::default(),
        }));
        assert!(matches!(
            session_settings(
                settings,
                &args(),
                "http://127.0.0.1:1",
                &SessionSecret::Configured
            ),
            Err(DevError::Sinks(_))
        ));
    }

    #[test]
    fn a_stored_batch_reads_as_one_line_with_its_counts_and_location() {
        let line = describe(&outcome(
            OutcomeState::Completed,
            OutcomeResult {
                outcome: Some("stored".into()),
                location: Some("file:///d/batches/abc/results.jsonl".into()),
                size_bytes: Some(1700),
                lines: Some(4),
                error_lines: Some(1),
                ..OutcomeResult::default()
            },
        ));
        assert_eq!(
            line,
            "[gemhook dev] outcome msg_1 batch.succeeded batches/abc → completed: stored 1.7 KiB, \
             4 lines, 1 with an error, at file:///d/batches/abc/results.jsonl"
        );
    }

    #[test]
    fn failures_and_dead_letters_say_why() {
        let mut failed = outcome(
            OutcomeState::Completed,
            OutcomeResult {
                outcome: Some("recorded".into()),
                ..OutcomeResult::default()
            },
        );
        failed.error = Some(OutcomeError {
            origin: ErrorOrigin::Gemini,
            code: Some("3".into()),
            message: Some("bad input".into()),
        });
        assert!(describe(&failed).ends_with("→ completed: recorded Gemini's error 3: bad input"));
        let mut dead = outcome(OutcomeState::Discarded, OutcomeResult::default());
        dead.error = Some(OutcomeError {
            origin: ErrorOrigin::Gemhook,
            code: Some("failed".into()),
            message: Some("the server answered 404".into()),
        });
        assert!(describe(&dead).contains("→ discarded: dead-lettered: the server answered 404"));
    }

    #[test]
    fn a_database_password_is_not_printed() {
        assert_eq!(
            display_database_url("postgres://u:hunter2@db/x"),
            "postgres://u:***@db/x"
        );
        assert_eq!(display_database_url(DEV_DATABASE_URL), DEV_DATABASE_URL);
    }
}
