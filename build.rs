//! Marks the Postgres half of the integration suite as ignored, not passed, when there is no
//! Postgres to run it on: `cargo test` then reports it as "ignored" with the reason, instead of
//! a row of `ok` for tests that did nothing. Under `CI=true` it is always compiled in, so a
//! missing Postgres fails the run (see `postgres_available` in tests/api/helpers.rs).
//!
//! The console's browser tests likewise: compiled in when chromedriver is installed (or under
//! `CI=true`, whose `.ci/run` installs it), reported as ignored otherwise.

fn main() {
    println!("cargo:rerun-if-env-changed=GEMHOOK_TEST_CHROMEDRIVER");
    println!("cargo:rustc-check-cfg=cfg(gemhook_browser_tests)");
    let chromedriver = std::env::var_os("GEMHOOK_TEST_CHROMEDRIVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into());
    println!("cargo:rerun-if-env-changed=GEMHOOK_TEST_DATABASE_URL");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rustc-check-cfg=cfg(gemhook_postgres_tests)");
    let configured = std::env::var_os("GEMHOOK_TEST_DATABASE_URL").is_some();
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if configured || ci {
        println!("cargo:rustc-cfg=gemhook_postgres_tests");
    }
    if ci || chromedriver.exists() {
        println!("cargo:rustc-cfg=gemhook_browser_tests");
    }
}
