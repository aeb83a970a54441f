//! A local stand-in for Gemini's REST API: the parts gemhook's worker calls (file downloads,
//! batches, video operations, interactions), with Gemini's paths, key check, redirects and
//! error shape, and content derived from each resource's id.
//!
//! - [`resources`] (pure): which ids name resources the stand-in has, and in what state; and
//!   the ids `gemhook send` builds so that its events point at them.
//! - [`bodies`] (pure): the JSON, JSONL and MP4 bodies, and Google's error bodies. Also used
//!   by the test suite's scriptable stand-in, so realistic bodies have one home.
//! - [`server`]: the axum routes on a loopback port.
//!
//! Used by `gemhook dev` (with a full gemhook wired to it), by `gemhook dev --gemini-only`
//! (bench/run's download source) and by the tests.

pub mod bodies;
pub mod resources;
pub mod server;

pub use server::{GeminiStandIn, StandInError, StandInSettings};

/// The API key `gemhook dev` gives its worker and its stand-in. Not a secret (it is in the
/// README), but held as [`crate::config::Redacted`] like any key so it never reaches a log.
pub const DEV_API_KEY: &str = "gemhook-dev-key";
