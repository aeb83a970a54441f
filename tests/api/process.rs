//! The real `gemhook` binary as an operator runs it: start-up errors, logs, signals, the CLI.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::helpers::*;

/// A `gemhook` child process with its output captured.
pub struct Gemhook {
    child: Child,
    output: Arc<Mutex<String>>,
}

pub fn gemhook_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gemhook"));
    // Only what the test says: nothing from the developer's environment leaks in.
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// Runs `gemhook ARGS` with `env` to its end and checks that it succeeded (its stderr in the
/// failure message); its output.
pub fn gemhook_ok(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let output = gemhook_command(env).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "gemhook {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Gemhook {
    /// Starts `gemhook serve` and waits until it logs the address it listens on.
    pub fn serve(env: &[(&str, &str)]) -> (Gemhook, String) {
        Self::start(&["serve"], env)
    }

    /// Starts `gemhook <args>` (a serving command) and waits until it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> (Gemhook, String) {
        Self::start_program(
            std::path::Path::new(env!("CARGO_BIN_EXE_gemhook")),
            args,
            env,
        )
    }

    /// Starts another program built on gemhook (an example) and waits until it listens.
    pub fn start_program(
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Gemhook, String) {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (name, value) in env {
            command.env(name, value);
        }
        Self::from_command(command, args)
    }

    /// Starts a prepared command (environment, working directory) and waits until it listens.
    pub fn from_command(mut command: Command, args: &[&str]) -> (Gemhook, String) {
        // A console on a free port unless the test says otherwise: tests run side by side, and
        // the default address can be held by only one of them.
        if !command
            .get_envs()
            .any(|(name, _)| name == "GEMHOOK_ADMIN_LISTEN")
        {
            command.env("GEMHOOK_ADMIN_LISTEN", "127.0.0.1:0");
        }
        let mut child = command
            .args(args)
            .env("GEMHOOK_LISTEN", "127.0.0.1:0")
            .env("GEMHOOK_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Both streams go to one buffer; the logs (and so the "listening" line) are on stderr,
        // what commands print (the banner) on stdout.
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let out = output.clone();
            let address_tx = address_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                        && json["message"] == "gemhook listening"
                    {
                        let _ = address_tx.send(json["addr"].as_str().unwrap().to_owned());
                    }
                    out.lock().unwrap().push_str(&line);
                    out.lock().unwrap().push('\n');
                }
            });
        }
        let Ok(address) = address_rx.recv_timeout(Duration::from_secs(30)) else {
            // Not left running behind a failed test.
            let _ = child.kill();
            let _ = child.wait();
            panic!("gemhook did not start: {}", output.lock().unwrap());
        };
        (Gemhook { child, output }, format!("http://{address}"))
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns whether it exited 0.
    pub fn wait_success(&mut self) -> bool {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("gemhook did not exit within 15 s");
    }

    /// The output once it contains `text`, or after 10 s whatever it is: what a command
    /// prints (the banner) is on stdout, read by another thread than the stderr log line the
    /// start-up waits for, so it can arrive a moment later.
    pub fn output_containing(&self, text: &str) -> String {
        for _ in 0..200 {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.output()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The console's address (`http://…`), from its start-up log line (logged before the
    /// "gemhook listening" line that start-up waits for).
    pub fn console_address(&self) -> String {
        self.output()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|json| json["message"] == "console listening")
            .and_then(|json| json["addr"].as_str().map(|addr| format!("http://{addr}")))
            .unwrap_or_else(|| panic!("no console listening: {}", self.output()))
    }

    /// Whether the process is still running (it has not exited, nor been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process outright (SIGKILL): no shutdown code runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gemhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_malformed_secret_stops_start_up_naming_its_position_and_never_echoing_it() {
    let output = gemhook_command(&[
        (
            "GEMHOOK_WEBHOOK_SECRETS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_s3cr3t-Value!",
        ),
        ("GEMHOOK_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    ])
    .arg("serve")
    .output()
    .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("webhook secret #2 of 2 is invalid"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cr3t"));
}

#[test]
fn an_empty_secret_stops_start_up() {
    let output = gemhook_command(&[
        ("GEMHOOK_WEBHOOK_SECRETS", "whsec_"),
        ("GEMHOOK_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
    ])
    .arg("serve")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("#1 of 1 is invalid: it is empty"),
        "{stderr}"
    );
}

#[tokio::test]
async fn secrets_and_signatures_never_appear_in_the_logs() {
    // What reaches the logs does not depend on the database: SQLite, so it runs without Postgres.
    let db = BACKEND.scope(Backend::Sqlite, TestDatabase::create()).await;
    let (mut gemhook, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("RUST_LOG", "debug"),
    ]);
    let client = reqwest::Client::new();
    let url = format!("{address}/webhooks/gemini");
    let id = unique_id();
    let body = batch_succeeded("logged");
    let timestamp = unix_now();
    let good = signature(SECRET, &id, timestamp, body.as_bytes());
    let bad = signature(OTHER_SECRET, &id, timestamp, body.as_bytes());
    for sig in [&good, &bad] {
        client
            .post(&url)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", sig.as_str())
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    gemhook.terminate();
    assert!(gemhook.wait_success());

    let logs = gemhook.output();
    assert!(
        logs.contains(&id),
        "the delivery was logged with its id: {logs}"
    );
    let key = SECRET.trim_start_matches("whsec_");
    for secret_text in [SECRET, key, good.as_str(), bad.as_str()] {
        assert!(
            !logs.contains(secret_text),
            "{secret_text} leaked into: {logs}"
        );
    }
    // Signature values without their `v1,` prefix as well.
    assert!(!logs.contains(&good[3..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn sigterm_lets_an_in_flight_delivery_finish_then_exits_zero() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let (mut gemhook, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
    ]);
    let id = unique_id();
    let body = batch_succeeded("in-flight");
    let timestamp = unix_now();
    let signature = signature(SECRET, &id, timestamp, body.as_bytes());
    // The body trickles in over ~600 ms; SIGTERM arrives while it does.
    let chunks: Vec<bytes::Bytes> = body
        .as_bytes()
        .chunks(body.len() / 3 + 1)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let slow_body = futures::stream::unfold(chunks.into_iter(), |mut rest| async move {
        let chunk = rest.next()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((Ok::<_, std::io::Error>(chunk), rest))
    });
    let request = reqwest::Client::new()
        .post(format!("{address}/webhooks/gemini"))
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("content-length", body.len().to_string())
        .body(reqwest::Body::wrap_stream(slow_body))
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(250)).await;

    gemhook.terminate();
    let response = in_flight.await.unwrap().unwrap();

    assert_eq!(response.status(), 200);
    assert!(gemhook.wait_success(), "exit status 0 after SIGTERM");
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE webhook_id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    pool.close().await;
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn events_list_and_show_print_what_was_stored() {
    crate::require_postgres!();
    let app = spawn_app().await;
    let id = unique_id();
    let body = batch_succeeded("cli");
    assert_eq!(app.post_signed(&id, &body).await.status(), 200);
    let env = [("GEMHOOK_DATABASE_URL", app.db.url.as_str())];

    let list = gemhook_command(&env)
        .args(["events", "list", "--json", "--limit", "5"])
        .output()
        .unwrap();
    let show = gemhook_command(&env)
        .args(["events", "show", &id, "--json"])
        .output()
        .unwrap();

    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let first = &listed.as_array().unwrap()[0];
    assert_eq!(first["webhook_id"], id.as_str());
    assert_eq!(first["type"], "batch.succeeded");
    assert_eq!(first["status"], "accepted");
    assert!(first["received_at"].is_string());

    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["body"], body.as_str());
    assert_eq!(shown["headers"]["webhook-id"], id.as_str());
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(shown["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, body.as_bytes());
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn migrate_applies_the_schema_and_exits() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let output = gemhook_command(&[("DATABASE_URL", &db.url)])
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('events', 'jobs')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_database_variable_a_fresh_directory_serves_sends_and_lists_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("gemhook-fresh-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let in_dir = |command: &mut Command| {
        command.current_dir(&dir);
    };
    let mut serve = gemhook_command(&[("GEMHOOK_WEBHOOK_SECRETS", SECRET)]);
    in_dir(&mut serve);
    let (mut gemhook, address) = Gemhook::from_command(serve, &["serve"]);
    let url = format!("{address}/webhooks/gemini");

    let mut send = gemhook_command(&[]);
    in_dir(&mut send);
    let sent = send
        .args(["send", "batch.succeeded", "--url", &url, "--secret", SECRET])
        .output()
        .unwrap();
    let mut list = gemhook_command(&[]);
    in_dir(&mut list);
    let listed = list.args(["events", "list", "--json"]).output().unwrap();
    gemhook.terminate();
    assert!(gemhook.wait_success());

    let sent_text = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{sent_text}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        sent_text.contains(r#"→ 200 {"status":"accepted"}"#),
        "{sent_text}"
    );
    let events: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(events[0]["type"], "batch.succeeded");
    assert!(
        dir.join("data/gemhook.db").exists(),
        "the embedded database was created"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gemhook_processes_on_one_sqlite_file_never_process_a_job_twice() {
    use crate::standin::{Answer, GeminiStandIn};
    let gemini = GeminiStandIn::start().await;
    let db = crate::helpers::BACKEND
        .scope(crate::helpers::Backend::Sqlite, TestDatabase::create())
        .await;
    let results = std::env::temp_dir().join(format!("gemhook-two-{}", db.name));
    let results_dir = results.to_string_lossy().into_owned();
    let env = [
        ("GEMHOOK_DATABASE_URL", db.url.as_str()),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMHOOK_GEMINI_BASE_URL", gemini.url.as_str()),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_RESULTS_DIR", results_dir.as_str()),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
        ("GEMHOOK_POLL_INTERVAL_MS", "50"),
    ];
    let (mut receiver, address) = Gemhook::start(&["serve", "--role", "receiver"], &env);
    let client = reqwest::Client::new();
    for i in 0..60 {
        gemini.script(
            &format!("two{i}"),
            [Answer::Body(bytes::Bytes::from(format!("{{\"k\":{i}}}\n")))],
        );
        let id = unique_id();
        let body = format!(
            r#"{{"type":"batch.succeeded","data":{{"id":"batches/t{i}","output_file_uri":"files/two{i}"}}}}"#
        );
        let url = format!("{address}/webhooks/gemini");
        let status = signed_request(&client, &url, &id, body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }

    let (mut one, _) = Gemhook::start(&["serve", "--role", "worker"], &env);
    let (mut two, _) = Gemhook::start(&["serve", "--role", "worker"], &env);
    let mut done = false;
    for _ in 0..400 {
        let listed = gemhook_command(&env)
            .args([
                "jobs",
                "list",
                "--state",
                "completed",
                "--json",
                "--limit",
                "100",
            ])
            .output()
            .unwrap();
        let completed: serde_json::Value =
            serde_json::from_slice(&listed.stdout).unwrap_or_default();
        if completed.as_array().is_some_and(|jobs| jobs.len() == 60) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for process in [&mut one, &mut two, &mut receiver] {
        process.terminate();
        assert!(process.wait_success());
    }
    let _ = std::fs::remove_dir_all(&results);

    assert!(done, "all 60 jobs completed");
    for i in 0..60 {
        assert_eq!(
            gemini.hits_for(&format!("two{i}:")),
            1,
            "file two{i} fetched once"
        );
    }
}
