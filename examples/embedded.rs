//! Embedding gemhook as a library: the receiver and worker run as usual, and finished outcomes
//! reach your own Rust code through a `Handler`, with the worker's retries and dead letters.
//!
//! The sink that calls the handler is declared here in code when the configuration does not
//! declare it (a file named by `GEMHOOK_CONFIG` may, to add a filter):
//!
//! ```toml
//! [[sinks]]
//! name = "workflow"
//! kind = "handler"
//! [sinks.filter]
//! types = ["batch.*", "interaction.requires_action"]
//! ```
//!
//! Run: `cargo run --example embedded`, then, in another terminal, `gemhook send
//! batch.failed` (the development secret, as for `gemhook serve`, is kept in ./data): the
//! handler prints the outcome once the worker has finished the job. Events that need Gemini
//! (batch.succeeded) need GEMINI_API_KEY, or `gemhook dev --gemini-only` as the base URL.

use std::path::PathBuf;

use gemhook::config::Settings;
use gemhook::deliver::sinks::HandlerSinkConfig;
use gemhook::deliver::{BoxFuture, Filter, Handler, HandlerError, Outcome, SinkConfig};

/// Resumes the application's workflow when Gemini's job is done. Here it prints one JSON line
/// per outcome; a real one would update a database row or wake a waiting task.
struct ResumeWorkflow;

impl Handler for ResumeWorkflow {
    fn handle<'a>(&'a self, outcome: &'a Outcome) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let line = serde_json::json!({
                "handled": outcome.webhook_id,
                "type": outcome.event_type,
                "state": outcome.state,
            });
            println!("{line}");
            // Returning HandlerError::retry(..) would make the worker try again later with
            // backoff; HandlerError::discard(..) dead-letters the delivery.
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = std::env::var_os("GEMHOOK_CONFIG").map(PathBuf::from);
    let mut settings = Settings::load(config.as_deref())?;
    let telemetry = gemhook::telemetry::init(settings.log_format)?;
    if !settings.sinks.iter().any(|sink| sink.name() == "workflow") {
        settings.sinks.push(SinkConfig::Handler(HandlerSinkConfig {
            name: "workflow".into(),
            inline_max_bytes: 64 * 1024,
            timeout_secs: 10,
            retry: Default::default(),
            filter: Filter::default(),
        }));
    }
    if let Some(dev) = gemhook::dev_secret::apply(&mut settings, || {
        gemhook::tools::send::generate_secret(32).unwrap_or_default()
    })? {
        println!(
            "development webhook secret: {} (in {})",
            dev.secret,
            dev.path.display()
        );
    }
    let app = gemhook::Server::new(settings)
        .handler("workflow", ResumeWorkflow)
        .build()
        .await?;
    app.run_until_stopped(gemhook::startup::shutdown_signal())
        .await?;
    telemetry.shutdown().await;
    Ok(())
}
