//! gemhook: a webhook receiver for Google's Gemini API.
//!
//! Modules follow a delivery's path, each depending only on the ones before it:
//!
//! - [`http`]: `POST /webhooks/gemini` keeps the raw body and answers; health and metrics.
//! - [`verify`]: pure signature and timestamp checks (`v1`, `v1a`, JWT; no I/O, clock passed
//!   in); [`jwks`] keeps Google's keys and holds the one verification policy (try, refetch on
//!   a miss, try again) the receiver and `gemhook verify` share. [`envelope`]: pure, defensive
//!   reading of the event.
//! - [`store`]: events (the idempotency table), the two queues (jobs, deliveries), results and
//!   outcomes. Written once over a small dialect seam (`store::db`); the queues' state machine
//!   is [`store::queue`]; group commit (`store::group_commit`, `store::finish_group`) serves
//!   both backends; Postgres and embedded SQLite differ only in `store::postgres` and
//!   `store::sqlite`.
//! - [`queue`]: the queue at run time (claim, heartbeat, finish, retry decision), shared by
//!   [`worker`] (jobs: follows pointers through [`gemini`] into [`results`]) and [`deliver`]
//!   (deliveries: hands each outcome to the application's sinks), which never import each
//!   other's queue machinery.
//!
//! Leaves: [`telemetry`] (logs, traces), [`observe`] (metrics), [`redact`] (secrets in memory),
//! [`outbound`] (how an outbound HTTP failure is read), [`retention`] (pruning). At the edge, depending on everything and used by nothing in the
//! core: [`inspect`] (what the CLI and the console read and do to stored work, written once),
//! [`admin`] (the console's pages and the admin API, on their own listener), [`config`] (defaults → file → environment), [`startup`] (build → port → run, and the
//! embeddable [`Server`]), [`dev_secret`], [`cli`] (the commands) and [`tools`] (`send`,
//! `capture`, `verify`'s explanation, the load generator, `gemhook dev` and its Gemini
//! stand-in).

#![forbid(unsafe_code)]

pub use startup::Server;

pub mod admin;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod dev_secret;
pub mod envelope;
pub mod gemini;
pub mod http;
pub mod inspect;
pub mod jwks;
pub mod observe;
pub mod outbound;
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
