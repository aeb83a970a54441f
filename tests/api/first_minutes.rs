//! What a new user meets first, through the real binary: the quick start as the README gives
//! it, strict configuration, and output that tools can read.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::helpers::*;
use crate::process::{Gemhook, gemhook_command};

/// A fresh directory, removed when dropped: each test runs the binary there, as a user would
/// run it in a new checkout.
struct Folder(PathBuf);

impl Folder {
    fn new() -> Folder {
        let path = std::env::temp_dir().join(format!("gemhook-first-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Folder(path)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    gemhook_command(env)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The README's quick start, verbatim: `gemhook serve` with nothing configured, then
/// `gemhook send batch.succeeded` with nothing but the event type.
#[test]
fn serve_with_no_secret_on_loopback_prints_a_dev_secret_that_send_then_uses() {
    let dir = Folder::new();
    let (mut server, address) = {
        let mut command = gemhook_command(&[]);
        command.current_dir(&dir.0);
        Gemhook::from_command(command, &["serve"])
    };
    let url = format!("{address}/webhooks/gemini");

    let sent = run(&dir.0, &[], &["send", "batch.succeeded", "--url", &url]);

    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(
        text(&sent.stdout).contains(r#"200 {"status":"accepted"}"#),
        "{}",
        text(&sent.stdout)
    );
    let secret = std::fs::read_to_string(dir.0.join("data/dev-webhook-secret")).unwrap();
    let banner = server.output_containing(secret.trim());
    assert!(
        banner.contains(secret.trim()),
        "the banner shows the secret: {banner}"
    );
    assert!(banner.contains("gemhook send batch.succeeded"), "{banner}");
    assert!(banner.contains("(created)"), "{banner}");
    server.terminate();
    assert!(server.wait_success());

    // A restart keeps the same secret (a copied command keeps working).
    let (mut again, _) = {
        let mut command = gemhook_command(&[]);
        command.current_dir(&dir.0);
        Gemhook::from_command(command, &["serve"])
    };
    assert!(
        again
            .output_containing(secret.trim())
            .contains(secret.trim())
    );
    again.terminate();
    assert!(again.wait_success());
}

#[test]
fn serve_on_a_public_address_without_a_secret_refuses_to_start_with_the_reason() {
    let dir = Folder::new();
    let output = gemhook_command(&[])
        .current_dir(&dir.0)
        .env("GEMHOOK_LISTEN", "0.0.0.0:0")
        .args(["serve"])
        .output()
        .unwrap();

    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no webhook secret is configured"),
        "{stderr}"
    );
    assert!(stderr.contains("GEMHOOK_WEBHOOK_SECRETS"), "{stderr}");
    assert!(stderr.contains("GEMHOOK_DYNAMIC_WEBHOOKS_ONLY"), "{stderr}");
}

#[test]
fn a_command_run_where_there_is_no_database_refuses_unless_asked_to_create_one() {
    let dir = Folder::new();

    let refused = run(&dir.0, &[], &["events", "list"]);

    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("no database at "), "{stderr}");
    assert!(stderr.contains("--create"), "{stderr}");
    assert!(
        !dir.0.join("data/gemhook.db").exists(),
        "nothing was created"
    );

    let created = run(&dir.0, &[], &["events", "list", "--json", "--create"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(text(&created.stderr).contains("created a new database at "));
    let listed: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(listed, serde_json::json!([]));
}

#[test]
fn json_output_is_one_document_on_stdout_with_logs_and_warnings_on_stderr() {
    let dir = Folder::new();
    let env = [
        ("GEMHOOK_LOG_FORMAT", "json"),
        // A typo: warned about with the right name, never fatal.
        ("GEMHOOK_WEBHOOK_SECRET", SECRET),
    ];

    let output = run(&dir.0, &env, &["events", "list", "--json", "--create"]);

    assert!(output.status.success(), "{}", text(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            text(&output.stdout)
        )
    });
    assert!(document.is_array());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("did you mean `GEMHOOK_WEBHOOK_SECRETS`?"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_key_in_the_configuration_file_stops_the_command_with_the_nearest_name() {
    let dir = Folder::new();
    std::fs::write(dir.0.join("gemhook.toml"), "listn = \"127.0.0.1:9000\"\n").unwrap();

    let output = run(
        &dir.0,
        &[],
        &["--config", "gemhook.toml", "config", "check"],
    );

    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("unknown key `listn`"), "{stderr}");
    assert!(stderr.contains("did you mean `listen`?"), "{stderr}");
}

#[test]
fn config_check_shows_each_source_and_never_a_secret() {
    let dir = Folder::new();
    std::fs::write(dir.0.join("gemhook.toml"), "max_body_bytes = 2048\n").unwrap();
    let env = [
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMINI_API_KEY", "sk-very-secret-key"),
        ("PORT", "9123"),
    ];

    let output = run(
        &dir.0,
        &env,
        &["--config", "gemhook.toml", "config", "check", "--json"],
    );

    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let line = |key: &str| lines.iter().find(|l| l["key"] == key).unwrap().clone();
    assert_eq!(line("max_body_bytes")["value"], 2048);
    assert!(
        line("max_body_bytes")["source"]
            .as_str()
            .unwrap()
            .starts_with("file ")
    );
    assert_eq!(line("listen")["value"], "0.0.0.0:9123", "PORT is honoured");
    assert_eq!(
        line("webhook_secrets")["source"],
        "environment GEMHOOK_WEBHOOK_SECRETS"
    );
    let printed = text(&output.stdout);
    assert!(
        !printed.contains("MfKQ9r8") && !printed.contains("sk-very-secret"),
        "{printed}"
    );
}

#[test]
fn a_database_that_refuses_connections_is_named_with_the_reason() {
    let dir = Folder::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/gemhook");
    let env = [
        ("GEMHOOK_DATABASE_URL", url.as_str()),
        ("GEMHOOK_DATABASE_ACQUIRE_TIMEOUT_MS", "500"),
    ];

    let output = run(&dir.0, &env, &["events", "list"]);

    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot connect to the database at 127.0.0.1:{port}/gemhook"
        )),
        "{stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
}

#[test]
fn a_read_only_data_folder_is_named_in_the_error() {
    // Root ignores permissions; the check needs an ordinary user's view of the folder.
    if running_as_root() {
        let dir = Folder::new();
        let file = dir.0.join("not-a-folder");
        std::fs::write(&file, "").unwrap();
        let url = format!("sqlite://{}/gemhook.db", file.display());
        let output = run(
            &dir.0,
            &[("GEMHOOK_DATABASE_URL", &url)],
            &["events", "list", "--create"],
        );
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        assert!(stderr.contains(&file.display().to_string()), "{stderr}");
        return;
    }
    let dir = Folder::new();
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut permissions = std::fs::metadata(&data).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&data, permissions).unwrap();

    let output = run(&dir.0, &[], &["events", "list", "--create"]);

    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("data/gemhook.db"),
        "{}",
        text(&output.stderr)
    );
}

/// Whether this process runs as root (as CI does here), where file permissions do not bind.
fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn events_tail_prints_new_deliveries_as_they_arrive() {
    let dir = Folder::new();
    let (mut server, address) = {
        let mut command = gemhook_command(&[("GEMHOOK_WEBHOOK_SECRETS", SECRET)]);
        command.current_dir(&dir.0);
        Gemhook::from_command(command, &["serve"])
    };
    let tail = gemhook_command(&[])
        .current_dir(&dir.0)
        .args([
            "events",
            "tail",
            "--json",
            "--count",
            "2",
            "--interval-ms",
            "50",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the tail take its starting point before the deliveries arrive.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let url = format!("{address}/webhooks/gemini");
    let ids = ["msg_tail_one", "msg_tail_two"];
    for id in ids {
        let sent = run(
            &dir.0,
            &[],
            &[
                "send",
                "batch.failed",
                "--url",
                &url,
                "--secret",
                SECRET,
                "--id",
                id,
            ],
        );
        assert!(sent.status.success(), "{}", text(&sent.stderr));
    }

    let output = tail.wait_with_output().unwrap();

    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines: Vec<serde_json::Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seen: Vec<&str> = lines
        .iter()
        .map(|l| l["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ids);
    assert_eq!(lines[0]["status"], "accepted");
    assert_eq!(lines[0]["scheme"], "v1");
    server.terminate();
    assert!(server.wait_success());
}

#[test]
fn bench_ingest_with_the_wrong_secret_fails_and_says_why() {
    let dir = Folder::new();
    let (mut server, address) = {
        let mut command = gemhook_command(&[("GEMHOOK_WEBHOOK_SECRETS", SECRET)]);
        command.current_dir(&dir.0);
        Gemhook::from_command(command, &["serve", "--role", "receiver"])
    };
    let url = format!("{address}/webhooks/gemini");

    let output = run(
        &dir.0,
        &[],
        &[
            "bench",
            "ingest",
            "--url",
            &url,
            "--secret",
            OTHER_SECRET,
            "--requests",
            "5",
        ],
    );

    assert!(!output.status.success(), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("no delivery was accepted (5 failed)"),
        "{stderr}"
    );
    assert!(stderr.contains("--secret is not the secret"), "{stderr}");
    assert!(
        text(&output.stdout).contains("(e.g. 401)"),
        "{}",
        text(&output.stdout)
    );
    server.terminate();
    assert!(server.wait_success());
}
