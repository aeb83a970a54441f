//! gemhook: a webhook receiver for Google's Gemini API.
//!
//! Modules follow a delivery's path:
//!
//! - [`http`]: `POST /webhooks/gemini` keeps the raw body and answers; health and metrics.
//! - [`verify`]: pure signature and timestamp checks (`v1`, `v1a`, JWT; no I/O, clock passed
//!   in), and [`verify::explain`] for `gemhook verify`; [`jwks`] keeps Google's keys.
//! - [`envelope`]: pure, defensive reading of Gemini's event envelope.
//! - [`store`]: events (the idempotency table), jobs (the queue), results, outcomes and
//!   deliveries, behind one seam with a Postgres and an embedded SQLite backend.
//! - [`worker`]: claims jobs and follows their pointers through [`gemini`] (the REST client,
//!   pointer planning, `gs://` reads) into [`results`] (the results store). [`gemini`] also
//!   holds the WebhookService client behind `gemhook webhooks` and the watcher `serve` runs.
//! - [`deliver`]: hands each finished outcome to the application's sinks (HTTP, NATS, handler).
//!
//! Around them: [`config`] (defaults → file → environment), [`telemetry`] (logs), [`observe`]
//! (metrics), [`retention`] (pruning), [`startup`] (build → port → run until stopped, and the
//! embeddable [`Server`]), [`dev_secret`] (the development secret of a local `serve`),
//! [`cli`] (the commands), [`send`] and [`capture`] (trying and
//! checking a deployment), [`bench`] (the load generator).
//!
//! Beside the core, never used by it: [`tools`], with [`tools::gemini_dev`] (a local stand-in
//! for Gemini's REST API) and [`tools::dev`] (`gemhook dev`: the whole path on one machine).

#![forbid(unsafe_code)]

pub use startup::Server;

pub mod cli;
pub mod config;
pub mod deliver;
pub mod dev_secret;
pub mod envelope;
pub mod gemini;
pub mod http;
pub mod jwks;
pub mod observe;
pub mod queue;
pub mod redact;
pub mod results;
pub mod retention;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod verify;
pub mod worker;
