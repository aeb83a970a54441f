//! Embedding gemhook as a library: the receiver and worker run as usual, and finished outcomes
//! reach your own Rust code through a `Handler`, with the worker's retries and dead letters.
//!
//! Configuration (a file named by `GEMHOOK_CONFIG`) declares the sink that calls the handler:
//!
//! ```toml
//! [[sinks]]
//! name = "workflow"
//! kind = "handler"
//! [sinks.filter]
//! types = ["batch.*", "interaction.requires_action"]
//! ```
//!
//! Run: `GEMHOOK_CONFIG=gemhook.toml GEMHOOK_DATABASE_URL=... cargo run --example embedded`

use std::path::PathBuf;

use gemhook::config::Settings;
use gemhook::deliver::{BoxFuture, Handler, HandlerError, Outcome};

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
    let settings = Settings::load(config.as_deref())?;
    gemhook::telemetry::init(settings.log_format);
    let app = gemhook::Server::new(settings)
        .handler("workflow", ResumeWorkflow)
        .build()
        .await?;
    app.run_until_stopped(gemhook::startup::shutdown_signal())
        .await?;
    Ok(())
}
