//! The `gemhook` binary: parse the command line, run it, report errors with their causes.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = gemhook::cli::Cli::parse();
    match gemhook::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once (see `join_causes`), not anyhow's "{:#}", which repeats them.
            let causes = error.chain().skip(1).map(ToString::to_string);
            let text = gemhook::telemetry::join_causes(error.to_string(), causes);
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
