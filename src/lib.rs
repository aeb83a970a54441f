//! gemhook: a webhook receiver for Google's Gemini API.
//!
//! Modules follow a delivery's path:
//!
//! - [`http`]: `POST /webhooks/gemini` keeps the raw body and answers; health endpoints.
//! - [`verify`]: pure signature and timestamp checks (no I/O, clock passed in).
//! - [`envelope`]: pure, defensive reading of Gemini's event envelope.
//! - [`store`]: events (the idempotency table) and jobs (the queue), behind one seam.
//!
//! Around them: [`config`] (defaults → file → environment), [`telemetry`] (logs),
//! [`startup`] (build → port → run until stopped), [`cli`] (the commands).

#![forbid(unsafe_code)]

pub use startup::Server;

pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod envelope;
pub mod gemini;
pub mod http;
pub mod jwks;
pub mod observe;
pub mod results;
pub mod retention;
pub mod send;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod worker;
