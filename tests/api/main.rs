//! Black-box tests of gemhook over HTTP against a real Postgres (a fresh database per test).
//! One test binary, so the crate and its dependencies link once.

mod availability;
mod console;
mod console_browser;
mod dev;
mod dynamic;
mod faults;
mod first_minutes;
mod gemini_side;
mod handoff;
mod helpers;
mod operations;
mod private_pg;
mod process;
mod receive;
mod reliability;
mod scale;
mod standin;
mod traces;
mod worker;
