//! The command line: `serve`, `migrate`, `events`. The only place besides `main` that uses
//! `anyhow`: every command ends in a message for a human.

mod table;
mod webhooks;

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::retention;
use crate::startup::{self, Application, Role};
use crate::store::{
    DeliveryFilter, EventFilter, EventRecord, EventSummary, JobFilter, JobId, QueueState, Requeued,
};
use crate::telemetry;
use crate::tools::bench::{IngestPlan, RecordFiles};
use crate::tools::send::{SecretCommand, SendArgs};
use crate::verify::WebhookSecret;
use chrono::{DateTime, Utc};

#[derive(Debug, Parser)]
#[command(
    name = "gemhook",
    version,
    about = "A webhook receiver for Google's Gemini API"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (environment variables override both).
    #[arg(long, global = true, env = "GEMHOOK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Create the embedded SQLite database when it does not exist yet (`serve`, `migrate` and
    /// `dev` always do); without it, other commands refuse, so that one run from the wrong
    /// directory does not silently read a new, empty database.
    #[arg(long, global = true)]
    pub create: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `--help` documents every option and argument of every command.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "gemhook", &mut missing);
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print every key's effective value (secrets redacted)
    /// and where it came from: built-in default, the file, or an environment variable.
    Check {
        /// One JSON array of {key, value, source} objects.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the receiver and/or the worker until SIGTERM or SIGINT.
    Serve {
        /// Which parts run: the receiver, the worker, or both.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect received events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Inspect and re-queue jobs (the worker's queue).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Process a stored event again: its job is re-queued.
    Replay {
        /// The event's webhook-id, as `events list` shows it.
        webhook_id: String,
    },
    /// Explain whether a captured delivery verifies against the configured secrets and keys
    /// (a file from `events show --json`, a raw HTTP request, or `-` for stdin).
    Verify(crate::tools::capture::VerifyArgs),
    /// Hand-off deliveries: each (outcome, sink) pair.
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// The queue at a glance: jobs by state, the backlog's age, why jobs were dead-lettered.
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete finished events (and their jobs and result rows) older than an age.
    Prune {
        /// At least 2d: Gemini retries for 24 hours and deduplication must outlive that.
        #[arg(long, default_value = "7d", value_parser = parse_retention)]
        older_than: std::time::Duration,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete dead-lettered (discarded) events too; they are kept otherwise.
        #[arg(long)]
        include_discarded: bool,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Secrets for signing deliveries.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Build, sign and POST a realistic Gemini event (like `stripe trigger`).
    Send(SendArgs),
    /// See the whole path locally: gemhook plus a stand-in for Gemini, wired together, each
    /// outcome printed here. No Google account needed.
    Dev(crate::tools::dev::DevArgs),
    /// Gemini's side: register, list, update, ping and rotate the project's webhooks
    /// (WebhookService, with GEMINI_API_KEY).
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Load generators for measuring a running receiver.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The newest jobs first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = state_parser())]
        state: Option<QueueState>,
        /// Only jobs of this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only jobs created since then: an age (1h, 2d) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// How many at most.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One job: every attempt's error, its lease and its result.
    Show {
        /// The job's id, as `jobs list` shows it.
        job_id: i64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue a job (attempts start again), or the dead letters with --discarded (those of
    /// a type or a last error only, when given; --dry-run counts them first).
    Retry {
        /// The job's id, as `jobs list` shows it.
        #[arg(required_unless_present = "discarded", conflicts_with = "discarded")]
        job_id: Option<i64>,
        /// Every dead-lettered (discarded) one instead of one by id.
        #[arg(long)]
        discarded: bool,
        /// With --discarded: only jobs of this event type.
        #[arg(long = "type", requires = "discarded")]
        event_type: Option<String>,
        /// With --discarded: only jobs whose last attempt failed with exactly this error (as
        /// `gemhook stats` groups them).
        #[arg(long, requires = "discarded")]
        last_error: Option<String>,
        /// With --discarded: count the jobs that would be re-queued, change nothing.
        #[arg(long, requires = "discarded")]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// The newest deliveries first.
    List {
        /// Only deliveries in this state.
        #[arg(long, value_parser = state_parser())]
        state: Option<QueueState>,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// How many at most.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One delivery: its sink, state and attempts, the delivery id and outcome it sends, and
    /// every failed attempt's answer (status and the start of the body, or the error).
    Show {
        /// The delivery's id, as `deliveries list` shows it.
        delivery_id: i64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue a delivery, or every discarded one with --discarded.
    Retry {
        /// The delivery's id, as `deliveries list` shows it.
        #[arg(required_unless_present = "discarded", conflicts_with = "discarded")]
        delivery_id: Option<i64>,
        /// Every dead-lettered (discarded) one instead of one by id.
        #[arg(long)]
        discarded: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Sign and post unique deliveries; print accepted/s and latency percentiles.
    Ingest {
        /// The receiver's webhook URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/gemini")]
        url: String,
        /// The whsec_ secret the receiver is configured with.
        #[arg(long, env = "GEMHOOK_BENCH_SECRET", hide_env_values = true)]
        secret: String,
        /// How many deliveries to send.
        #[arg(long, default_value_t = 1000)]
        requests: u64,
        /// Deliveries in flight at once (one connection each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Requests per second (open loop); without it, as fast as the concurrency allows.
        #[arg(long)]
        rate: Option<f64>,
        /// Share of requests (0 to 1) that repeat an earlier webhook-id.
        #[arg(long, default_value_t = 0.0)]
        duplicate_share: f64,
        /// The `type` of the events sent.
        #[arg(long, default_value = "batch.succeeded")]
        event_type: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// A request with no answer after this long (connecting included) is counted as timed
        /// out and its connection dropped, in milliseconds.
        #[arg(long, default_value_t = crate::tools::bench::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64)]
        request_timeout_ms: u64,
        /// Write the webhook-id of every delivery answered 2xx to FILE, one per line, as the
        /// answers arrive (to check afterwards that each was stored).
        #[arg(long, value_name = "FILE")]
        acked_ids: Option<PathBuf>,
        /// Write one line per request to FILE, as the answers arrive: the time it was sent (ms
        /// since the Unix epoch), how long its answer took (µs), the answer (accepted,
        /// duplicate, 503, 503-no-retry-after, status-NNN, connect-failed, not-sent,
        /// reset-after-sent, timeout) and its webhook-id.
        #[arg(long, value_name = "FILE")]
        answer_log: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// The newest events first.
    List {
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// How many events at most.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only this event type (e.g. batch.succeeded).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only this status.
        #[arg(long, value_parser = ["accepted", "ignored", "unparseable"])]
        status: Option<String>,
        /// Only events received since then: an age (1h, 2d) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
    },
    /// Everything stored about one event, the raw body included.
    Show {
        /// The delivery's webhook-id, as `events list` shows it.
        webhook_id: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Follow new deliveries as they are stored, with how each was filed (accepted, ignored,
    /// unparseable), its signing scheme and its job's state, until interrupted. Refused
    /// deliveries (401, 400) are never stored and so never shown: see the logs for those.
    Tail {
        /// One JSON object per line (NDJSON) instead of text.
        #[arg(long)]
        json: bool,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// How often to look for new events, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Stop after this many events (for scripts); unset, follow until interrupted.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // Neither needs configuration or a database, and `secret generate` prints only the
        // secret (so `$(gemhook secret generate)` works).
        Command::Secret { command } => {
            println!("{}", crate::tools::send::run_secret(command)?);
            Ok(())
        }
        Command::Send(mut args) => {
            if args.secret.is_none() && args.signing_key.is_none() {
                // The local server's development secret, as `gemhook serve` printed it.
                let path = crate::dev_secret::path_for(
                    &crate::dev_secret::database_url_from_environment(),
                );
                let secret = crate::dev_secret::load(&path).with_context(|| {
                    format!(
                        "no --secret given and no development secret in {} (start `gemhook serve` on a loopback address first, or pass --secret)",
                        path.display()
                    )
                })?;
                args.secret = Some(secret.into());
            }
            let outcome = crate::tools::send::send(args)
                .await
                .context("gemhook send")?;
            println!("{outcome}");
            if outcome.reply.is_some() && !outcome.is_success() {
                anyhow::bail!("the receiver did not accept the event");
            }
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { json },
        } => config_check(cli.config.as_deref(), json),
        command => run_configured(cli.config.as_deref(), cli.create, command).await,
    }
}

/// Validates first (the same checks as start-up), then shows where each value came from.
fn config_check(file: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let settings = Settings::load(file).context("invalid configuration")?;
    let lines = crate::config::provenance(file)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(());
    }
    let width = lines.iter().map(|l| l.key.len()).max().unwrap_or(0);
    for line in &lines {
        let value = match &line.value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        println!("{:width$}  {value}  ({})", line.key, line.source);
    }
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    println!("configuration is valid");
    Ok(())
}

async fn run_configured(
    config: Option<&std::path::Path>,
    create: bool,
    command: Command,
) -> anyhow::Result<()> {
    let mut settings = Settings::load(config).context("invalid configuration")?;
    settings.create_database = create || matches!(command, Command::Migrate);
    let telemetry = telemetry::init(settings.log_format).context("setting up traces")?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let ran = run_command(settings, command).await;
    // After `serve`'s graceful shutdown too: the spans of its last requests and jobs are
    // still in the exporter's batch.
    telemetry.shutdown().await;
    ran
}

async fn run_command(settings: Settings, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { role } => serve(&settings, role).await,
        Command::Migrate => {
            let store = startup::open(&settings).await?;
            store.migrate().await.context("migrating the database")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Events { command } => events(&settings, command).await,
        Command::Jobs { command } => jobs(&settings, command).await,
        Command::Replay { webhook_id } => {
            let store = startup::open(&settings).await?;
            let outcome = store.replay_event(&webhook_id).await.context("replaying")?;
            report_requeued(outcome, &format!("event {webhook_id}"))
        }
        Command::Stats { json } => stats(&settings, json).await,
        Command::Verify(args) => verify_capture(&settings, &args).await,
        Command::Deliveries { command } => deliveries(&settings, command).await,
        Command::Prune {
            older_than,
            dry_run,
            include_discarded,
        } => {
            let store = startup::open(&settings).await?;
            let scope = retention::scope(older_than, Utc::now(), include_discarded);
            if dry_run {
                let count = store.count_prunable(&scope).await.context("counting")?;
                println!(
                    "{count} event(s) received before {} would be pruned",
                    scope.cutoff
                );
            } else {
                let count = retention::prune(&store, &scope).await.context("pruning")?;
                println!("{count} event(s) received before {} pruned", scope.cutoff);
            }
            Ok(())
        }
        Command::Bench { command } => bench(command).await,
        Command::Webhooks { command } => webhooks::run(&settings, command).await,
        Command::Dev(args) => crate::tools::dev::run(settings, args)
            .await
            .context("gemhook dev"),
        Command::Secret { .. } | Command::Send(_) | Command::Config { .. } => Ok(()),
    }
}

async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    let BenchCommand::Ingest {
        url,
        secret,
        requests,
        concurrency,
        rate,
        duplicate_share,
        event_type,
        json,
        request_timeout_ms,
        acked_ids,
        answer_log,
    } = command;
    let secret = WebhookSecret::parse(&secret)
        .map_err(|reason| anyhow::anyhow!("the --secret is invalid: {reason}"))?;
    let plan = IngestPlan {
        url,
        secret,
        requests,
        concurrency,
        rate,
        duplicate_share,
        event_type,
        request_timeout: std::time::Duration::from_millis(request_timeout_ms.max(1)),
        record: RecordFiles {
            acked_ids,
            answer_log,
        },
    };
    let report = crate::tools::bench::ingest(plan).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    // A run where nothing got through measured nothing: say why and fail (a share of failures
    // is a result, which fault runs count on).
    if report.requests > 0 && report.accepted + report.duplicate == 0 {
        let hint = match report.other_status_seen {
            Some(401) => {
                ": the receiver answered 401, so --secret is not the secret it verifies with"
            }
            Some(_) => ": see the status counts above",
            None if report.connect_failed > 0 => ": nothing listens at --url",
            None => "",
        };
        anyhow::bail!("no delivery was accepted ({} failed){hint}", report.failed);
    }
    Ok(())
}

async fn serve(settings: &Settings, role: Role) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    let dev_secret = if role.receives() {
        crate::dev_secret::apply(&mut settings, || {
            crate::tools::send::generate_secret(32).unwrap_or_default()
        })?
    } else {
        None
    };
    let database_url = settings.database_url()?.to_owned();
    let creates_database = crate::store::sqlite_file(&database_url).is_some_and(|f| !f.exists());
    if database_url.starts_with("sqlite:") && in_container() {
        tracing::warn!(
            database = %database_url,
            "running in a container on the embedded SQLite database: mount a volume at its folder (the image declares /var/lib/gemhook/data) or set GEMHOOK_DATABASE_URL, or every event is lost with the container"
        );
    }
    let app = Application::build(&settings, role)
        .await
        .context("starting gemhook")?;
    print_banner(&settings, &app, role, creates_database, dev_secret.as_ref());
    app.run_until_stopped(startup::shutdown_signal())
        .await
        .context("serving HTTP")
}

/// Whether this looks like a container (Docker, Kubernetes, Cloud Run), where a file outside
/// a volume does not outlive a restart.
fn in_container() -> bool {
    std::path::Path::new("/.dockerenv").exists()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("K_SERVICE").is_some()
}

/// What a person starting gemhook needs to see once: where it listens and keeps its data, and
/// how to try it. On stdout; logs go to stderr.
fn print_banner(
    settings: &Settings,
    app: &Application,
    role: Role,
    created_database: bool,
    dev_secret: Option<&crate::dev_secret::DevSecret>,
) {
    let address = app.local_addr();
    let database = settings
        .database_url()
        .map(crate::config::redact_url)
        .unwrap_or_default();
    println!("gemhook {} ({role:?})", env!("CARGO_PKG_VERSION"));
    if role.receives() {
        println!("  webhook   http://{address}{}", crate::http::WEBHOOK_PATH);
    }
    if let Some(console) = app.admin_addr() {
        println!("  console   http://{console}/  (admin API: /api/v1/, metrics: /metrics)");
    }
    let created = if created_database { "  (created)" } else { "" };
    println!("  database  {database}{created}");
    if let Some(dev) = dev_secret {
        let how = if dev.created { "created" } else { "kept" };
        println!(
            "  secret    {}  (development secret, {how} in {})",
            dev.secret,
            dev.path.display()
        );
        println!("  try it    gemhook send batch.succeeded");
    }
}

async fn events(settings: &Settings, command: EventsCommand) -> anyhow::Result<()> {
    let store = startup::open(settings).await?;
    match command {
        EventsCommand::List {
            json,
            limit,
            event_type,
            status,
            since,
        } => {
            let filter = EventFilter {
                event_type,
                status,
                since,
                ..EventFilter::default()
            };
            let events = store
                .list_events(&filter, limit)
                .await
                .context("listing events")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&events)?);
            } else {
                print_event_table(&events);
            }
        }
        EventsCommand::Tail {
            json,
            event_type,
            interval_ms,
            count,
        } => tail_events(&store, event_type, interval_ms, count, json).await?,
        EventsCommand::Show { webhook_id, json } => {
            let event = store
                .find_event(&webhook_id)
                .await
                .context("reading the event")?
                .with_context(|| format!("no event with webhook-id {webhook_id}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::inspect::event_json(&event))?
                );
            } else {
                print_event(&event);
            }
        }
    }
    Ok(())
}

/// Polls for events received since the last one shown; prints each once, oldest first.
async fn tail_events(
    store: &crate::store::Store,
    event_type: Option<String>,
    interval_ms: u64,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    use std::collections::HashSet;
    // From now: what is already stored is `events list`'s business.
    let mut since = Utc::now();
    let mut shown: HashSet<crate::store::WebhookId> = HashSet::new();
    let mut printed = 0u64;
    if !json {
        eprintln!("following new events (Ctrl-C to stop)");
        println!("{}", table::TAIL.header());
    }
    loop {
        let filter = EventFilter {
            event_type: event_type.clone(),
            since: Some(since),
            ..EventFilter::default()
        };
        let mut events = store
            .list_events(&filter, 500)
            .await
            .context("listing events")?;
        events.reverse();
        for event in events {
            if !shown.insert(event.webhook_id.clone()) {
                continue;
            }
            // Rows committed out of order may carry a slightly older time: look back a little.
            since = since.max(event.received_at - chrono::Duration::seconds(2));
            if json {
                println!("{}", serde_json::to_string(&event)?);
            } else {
                let line = table::TAIL.row(&[
                    &event.received_at.format("%H:%M:%S%.3f"),
                    &event.webhook_id,
                    &event.event_type.as_deref().unwrap_or("-"),
                    &event.status,
                    &event.scheme,
                    &event.job_state.map_or("-", QueueState::as_str),
                ]);
                println!("{line}");
            }
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(interval_ms.max(10))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn jobs(settings: &Settings, command: JobsCommand) -> anyhow::Result<()> {
    let store = startup::open(settings).await?;
    match command {
        JobsCommand::List {
            state,
            event_type,
            since,
            json,
            limit,
        } => {
            let filter = JobFilter {
                state,
                event_type,
                since,
                ..JobFilter::default()
            };
            let jobs = store
                .list_jobs(&filter, limit)
                .await
                .context("listing jobs")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                table::JOBS.print(jobs.iter().map(|job| {
                    table::JOBS.row(&[
                        &job.id,
                        &job.state,
                        &job.attempt,
                        &job.event_type.as_deref().unwrap_or("-"),
                        &job.webhook_id,
                        &job.last_error.as_deref().unwrap_or(""),
                    ])
                }));
            }
        }
        JobsCommand::Show { job_id, json } => {
            let job = store
                .find_job(JobId(job_id))
                .await
                .context("reading the job")?
                .with_context(|| format!("no job {job_id}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                let j = &job.summary;
                println!("job:          {}", j.id);
                println!("webhook_id:   {}", j.webhook_id);
                println!("type:         {}", j.event_type.as_deref().unwrap_or("-"));
                println!("state:        {}", j.state);
                println!("attempt:      {}", j.attempt);
                println!("scheduled_at: {}", j.scheduled_at.to_rfc3339());
                if let Some(by) = &job.locked_by {
                    println!("locked_by:    {by}");
                }
                println!(
                    "errors:       {}",
                    serde_json::to_string_pretty(&job.errors)?
                );
                if let Some(result) = &job.result {
                    println!("result:       {}", serde_json::to_string_pretty(result)?);
                }
            }
        }
        JobsCommand::Retry {
            job_id: Some(job_id),
            ..
        } => {
            let outcome = store
                .requeue_job(JobId(job_id))
                .await
                .context("re-queueing")?;
            report_requeued(outcome, &format!("job {job_id}"))?;
        }
        JobsCommand::Retry {
            job_id: None,
            event_type,
            last_error,
            dry_run,
            ..
        } => {
            let filter = JobFilter {
                event_type,
                last_error,
                ..JobFilter::default()
            };
            let done = crate::inspect::retry_dead_jobs(&store, &filter, dry_run)
                .await
                .context("re-queueing")?;
            if dry_run {
                println!("{} discarded job(s) would be re-queued", done.matched);
            } else {
                println!("{} discarded job(s) re-queued", done.requeued);
            }
        }
    }
    Ok(())
}

/// Prints the explanation; exits non-zero when the capture would be refused.
async fn verify_capture(
    settings: &Settings,
    args: &crate::tools::capture::VerifyArgs,
) -> anyhow::Result<()> {
    let keys = settings.keys()?;
    let policy = settings.policy();
    // A fresh cache holds no set: the shared policy fetches Google's keys only when the capture
    // could verify with them, so a v1 capture is judged offline.
    let jwks = settings
        .dynamic_webhooks
        .then(|| -> anyhow::Result<_> {
            Ok(crate::jwks::JwksCache::new(
                settings.jwks_url()?,
                reqwest::Client::new(),
                std::time::Duration::from_secs(settings.jwks_ttl_secs),
                std::time::Duration::from_secs(settings.jwks_min_refresh_secs),
            ))
        })
        .transpose()?;
    let (output, accepted) = crate::tools::capture::run_verify(args, &keys, &policy, jwks.as_ref())
        .await
        .context("cannot verify the capture")?;
    if let Some(error) = jwks.as_ref().and_then(|cache| cache.status().last_error) {
        eprintln!(
            "warning: Google's JWKS could not be fetched ({error}); v1a/JWT entries are checked against configured keys only"
        );
    }
    println!("{output}");
    if !accepted {
        anyhow::bail!("the capture would be refused");
    }
    Ok(())
}

async fn deliveries(settings: &Settings, command: DeliveriesCommand) -> anyhow::Result<()> {
    let store = startup::open(settings).await?;
    match command {
        DeliveriesCommand::List { state, json, limit } => {
            let deliveries = store
                .list_deliveries(
                    &DeliveryFilter {
                        state,
                        ..DeliveryFilter::default()
                    },
                    limit,
                )
                .await
                .context("listing deliveries")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&deliveries)?);
            } else {
                table::DELIVERIES.print(deliveries.iter().map(|d| {
                    table::DELIVERIES.row(&[
                        &d.id,
                        &d.sink,
                        &d.state,
                        &d.attempt,
                        &d.webhook_id,
                        &d.last_error.as_deref().unwrap_or(""),
                    ])
                }));
            }
        }
        DeliveriesCommand::Show { delivery_id, json } => {
            let record = store
                .find_delivery(delivery_id)
                .await
                .context("reading the delivery")?
                .with_context(|| format!("no delivery with id {delivery_id}"))?;
            let sent_as = crate::deliver::Dispatcher::outgoing_id(
                &record.summary.webhook_id,
                record.revision,
                &record.summary.sink,
            );
            if json {
                let mut value = serde_json::to_value(&record)?;
                value["delivery_id"] = serde_json::Value::String(sent_as);
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let d = &record.summary;
                println!(
                    "delivery     {} (sent as webhook-id / Nats-Msg-Id {sent_as})",
                    d.id
                );
                println!("event        {}", d.webhook_id);
                println!("sink         {}", d.sink);
                println!("state        {} after {} attempt(s)", d.state, d.attempt);
                println!("scheduled    {}", d.scheduled_at);
                if let Some(done) = d.finalized_at {
                    println!("finalized    {done}");
                }
                let attempts = record.errors.as_array().map(Vec::as_slice).unwrap_or(&[]);
                println!("failed attempts: {}", attempts.len());
                for attempt in attempts {
                    println!(
                        "  #{} at {}: {}",
                        attempt["attempt"],
                        attempt["at"].as_str().unwrap_or("?"),
                        attempt["error"].as_str().unwrap_or("?")
                    );
                }
                println!("outcome sent:");
                println!("{}", serde_json::to_string_pretty(&record.outcome)?);
            }
        }
        DeliveriesCommand::Retry { delivery_id, .. } => {
            let count = store
                .requeue_deliveries(delivery_id)
                .await
                .context("re-queueing")?;
            match delivery_id {
                Some(id) if count == 0 => {
                    anyhow::bail!("delivery {id}: not found, or running right now")
                }
                _ => println!("{count} delivery(ies) re-queued"),
            }
        }
    }
    Ok(())
}

async fn stats(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let store = startup::open(settings).await?;
    let stats = crate::inspect::stats(&store, Utc::now())
        .await
        .context("reading the queues")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("jobs by state:");
    for (state, count) in &stats.jobs {
        println!("  {state:<10} {count}");
    }
    println!("backlog age: {:.1} s", stats.backlog_age_secs);
    println!("received in the last hour: {}", stats.received_last_hour);
    if !stats.discard_reasons.is_empty() {
        println!("dead letters by last error:");
        for reason in &stats.discard_reasons {
            println!("  {:>6}  {}", reason.count, reason.reason);
        }
    }
    Ok(())
}

/// `--since`: an age before now (`1h`, `2d`) or an RFC 3339 time.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let age = retention::parse_age(text).map_err(|e| e.to_string())?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    Ok(Utc::now() - age)
}

fn parse_retention(text: &str) -> Result<std::time::Duration, String> {
    retention::parse_age(text)
        .and_then(retention::check)
        .map_err(|e| e.to_string())
}

fn report_requeued(outcome: Requeued, what: &str) -> anyhow::Result<()> {
    match outcome {
        Requeued::Queued(job) => {
            println!("{what}: job {job} re-queued");
            Ok(())
        }
        Requeued::Running => {
            anyhow::bail!("{what}: its job is running right now; try again when it ends")
        }
        Requeued::NotFound => anyhow::bail!("{what}: not found"),
    }
}

fn print_event_table(events: &[EventSummary]) {
    table::EVENTS.print(events.iter().map(|e| {
        table::EVENTS.row(&[
            &e.received_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            &e.webhook_id,
            &e.event_type.as_deref().unwrap_or("-"),
            &e.status,
            &e.job_state.map_or("-", QueueState::as_str),
        ])
    }));
}

fn print_event(event: &EventRecord) {
    let s = &event.summary;
    println!("webhook_id:        {}", s.webhook_id);
    println!(
        "type:              {}",
        s.event_type.as_deref().unwrap_or("-")
    );
    println!(
        "resource_id:       {}",
        s.resource_id.as_deref().unwrap_or("-")
    );
    println!("status:            {}", s.status);
    println!("scheme:            {}", s.scheme);
    println!("received_at:       {}", s.received_at.to_rfc3339());
    println!("webhook_timestamp: {}", event.webhook_timestamp);
    println!(
        "job_state:         {}",
        s.job_state.map_or("-", QueueState::as_str)
    );
    println!("headers:           {}", event.headers);
    match std::str::from_utf8(&event.body) {
        Ok(text) => println!("body:\n{text}"),
        Err(_) => println!("body (base64):\n{}", STANDARD.encode(&event.body)),
    }
}

/// `--state`: one of the queue's state words, listed in `--help`.
fn state_parser() -> impl clap::builder::TypedValueParser<Value = QueueState> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(QueueState::ALL.map(QueueState::as_str)).map(|word| {
        word.parse::<QueueState>()
            .expect("the possible values are the states")
    })
}
