//! Tools beside the core: they use the core's modules, and the core never uses them.
//!
//! - [`gemini_dev`]: a local stand-in for the parts of Gemini's REST API that the worker calls
//!   (files, batches, video operations, interactions), deterministic per resource id, so the
//!   whole path can be seen and tested without a Google account.
//! - [`dev`]: `gemhook dev`, that stand-in plus a full gemhook wired to it and a sink that
//!   prints each outcome to the terminal.

pub mod bench;
pub mod capture;
pub mod dev;
pub mod explain;
pub mod gemini_dev;
pub mod send;
