//! Production shapes on Postgres: behind PgBouncer, on a database that turns read-only, and as
//! several receiver and worker processes on one database.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::process::{Gemhook, gemhook_command};
use crate::standin::{Answer, GeminiStandIn};

/// A PgBouncer of the test's own: its own port, ini and userlist in a temporary directory,
/// in front of the shared test server, stopped when dropped.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
    /// `transaction`, or `session` where the installed PgBouncer cannot carry prepared
    /// statements in transaction mode (before 1.21).
    pub pool_mode: &'static str,
}

/// The installed PgBouncer's version, e.g. (1, 18).
fn pgbouncer_version() -> (u32, u32) {
    let output = Command::new("pgbouncer")
        .arg("--version")
        .output()
        .expect("pgbouncer is installed (.ci/run installs Debian's package)");
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgBouncer {
    pub fn start() -> PgBouncer {
        use std::os::unix::process::CommandExt as _;
        let version = pgbouncer_version();
        // sqlx prepares every statement with a name; in transaction mode a later transaction
        // may land on a server connection that never saw it. PgBouncer 1.21 tracks them
        // (max_prepared_statements); older ones only work in session mode.
        let tracks_prepared = version >= (1, 21);
        let pool_mode = if tracks_prepared {
            "transaction"
        } else {
            "session"
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("gemhook-pgbouncer-{}", unique_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prepared = if tracks_prepared {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        // Transaction mode: a small server pool, so that the pooler really multiplexes the
        // processes' connections. Session mode holds a server connection per client.
        let pool_size = if tracks_prepared { 8 } else { 100 };
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port=5432\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\nmax_client_conn = 500\n{prepared}\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut command = Command::new("pgbouncer");
        command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // PgBouncer refuses to run as root: as root, run it as postgres.
        if is_root() {
            let (uid, gid) = postgres_ids();
            for path in ["", "pgbouncer.ini", "userlist.txt"] {
                std::os::unix::fs::chown(dir.join(path), Some(uid), Some(gid)).unwrap();
            }
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().expect("pgbouncer starts");
        let bouncer = PgBouncer {
            child,
            dir,
            port,
            pool_mode,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bouncer
    }

    /// The URL of `database` through this pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u32>()
            .expect("a postgres user exists")
    };
    (id("-u"), id("-g"))
}

/// Posts a signed `batch.succeeded` for `files/{file}` and returns the status.
pub async fn post_batch(client: &reqwest::Client, address: &str, id: &str, file: &str) -> u16 {
    let body = format!(
        r#"{{"type":"batch.succeeded","data":{{"id":"batches/{file}","output_file_uri":"files/{file}"}}}}"#
    );
    signed_request(client, &format!("{address}/webhooks/gemini"), id, body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `gemhook <args> --json` parsed, or Null when it fails.
fn cli_json(env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let output = gemhook_command(env).args(args).output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_default()
}

fn completed_jobs(env: &[(&str, &str)]) -> usize {
    let jobs = cli_json(
        env,
        &[
            "jobs",
            "list",
            "--state",
            "completed",
            "--json",
            "--limit",
            "1000",
        ],
    );
    jobs.as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn ingest_claims_and_the_cli_work_through_pgbouncer_with_listen_on_a_direct_connection() {
    crate::require_postgres!();
    let db = TestDatabase::create().await;
    let bouncer = PgBouncer::start();
    eprintln!(
        "pgbouncer {:?} in {} mode",
        pgbouncer_version(),
        bouncer.pool_mode
    );
    let gemini = GeminiStandIn::start().await;
    let pooled = bouncer.url(&db.name);
    let results = std::env::temp_dir().join(format!("gemhook-bouncer-{}", db.name));
    let results_dir = results.to_string_lossy().into_owned();
    let env = [
        ("GEMHOOK_DATABASE_URL", pooled.as_str()),
        ("GEMHOOK_DATABASE_LISTEN_URL", db.url.as_str()),
        ("GEMHOOK_AUTO_MIGRATE", "false"),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMHOOK_GEMINI_BASE_URL", gemini.url.as_str()),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_RESULTS_DIR", results_dir.as_str()),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
        ("GEMHOOK_DATABASE_MAX_CONNECTIONS", "8"),
        // Far longer than the test: jobs can only start this fast by LISTEN's wake-up.
        ("GEMHOOK_POLL_INTERVAL_MS", "600000"),
    ];
    // Migrations hold a session-level advisory lock: they run on the direct URL.
    let migrated = gemhook_command(&[("GEMHOOK_DATABASE_URL", db.url.as_str())])
        .arg("migrate")
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let (mut worker, _) = Gemhook::start(&["serve", "--role", "worker"], &env);
    let (mut receiver, address) = Gemhook::start(&["serve", "--role", "receiver"], &env);
    let client = reqwest::Client::new();

    // Each delivery twice at once: the duplicate races its original through the pooler.
    let mut sends = Vec::new();
    for i in 0..40 {
        let file = format!("pgb{i}");
        gemini.script(&file, [Answer::Body(format!("{{\"k\":{i}}}\n").into())]);
        let id = unique_id();
        for _ in 0..2 {
            let (client, address, id, file) =
                (client.clone(), address.clone(), id.clone(), file.clone());
            sends.push(tokio::spawn(async move {
                post_batch(&client, &address, &id, &file).await
            }));
        }
    }
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.unwrap());
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    while completed_jobs(&env) < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let completed = completed_jobs(&env);
    let events = cli_json(&env, &["events", "list", "--json", "--limit", "1000"]);
    for process in [&mut receiver, &mut worker] {
        process.terminate();
        assert!(process.wait_success(), "{}", process.output());
    }
    let _ = std::fs::remove_dir_all(&results);

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(events.as_array().map_or(0, Vec::len), 40, "events listed");
    assert_eq!(completed, 40, "jobs completed: {}", worker.output());
    for i in 0..40 {
        assert_eq!(gemini.hits_for(&format!("pgb{i}:")), 1, "file pgb{i}");
    }
    let logs = format!("{}{}", worker.output(), receiver.output());
    assert!(!logs.contains("prepared statement"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn a_read_only_database_is_answered_503_and_not_ready_until_it_is_writable_again() {
    crate::require_postgres!();
    let app = spawn_app().await;
    let warm = unique_id();
    assert_eq!(
        app.post_signed(&warm, &batch_succeeded("warm"))
            .await
            .status(),
        200
    );
    let name = app.db.name.clone();
    let readyz = |app: &TestApp| {
        let request = app.client.get(format!("{}/readyz", app.address)).send();
        async move { status_and_json(request.await.unwrap()).await }
    };

    // A failover to a read-only primary: the setting, and the old sessions gone.
    app.db
        .admin(&format!(
            r#"ALTER DATABASE "{name}" SET default_transaction_read_only = on"#
        ))
        .await;
    app.db
        .admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await;
    let refused: Vec<String> = (0..5).map(|_| unique_id()).collect();
    let mut statuses = Vec::new();
    for id in &refused {
        statuses.push(
            app.post_signed(id, &batch_succeeded(id))
                .await
                .status()
                .as_u16(),
        );
    }
    let (ready_status, ready_body) = readyz(&app).await;

    // Writable again; the pool still holds sessions opened read-only.
    app.db
        .admin(&format!(
            r#"ALTER DATABASE "{name}" SET default_transaction_read_only = off"#
        ))
        .await;
    let recovered_at = Instant::now();
    let mut recovered = false;
    while recovered_at.elapsed() < Duration::from_secs(10) {
        if readyz(&app).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut retried = Vec::new();
    for id in &refused {
        retried.push(
            app.post_signed(id, &batch_succeeded(id))
                .await
                .status()
                .as_u16(),
        );
    }

    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(ready_status, 503, "{ready_body}");
    assert_eq!(ready_body["writable"], false, "{ready_body}");
    assert!(
        recovered,
        "ready again within 10 s of the database turning writable"
    );
    assert_eq!(
        retried,
        vec![200; 5],
        "Gemini's retries are taken once writable"
    );
    assert_eq!(app.count("events").await, 6);
}

/// How many events the multi-process test sends: a short run in the suite, more from
/// `bench/scale` (GEMHOOK_BENCH_SCALE_EVENTS).
fn scale_events() -> usize {
    std::env::var("GEMHOOK_BENCH_SCALE_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(120)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn three_receivers_and_two_workers_on_one_database_store_run_and_hand_off_each_event_once() {
    crate::require_postgres!();
    use crate::handoff::{Application, http_sink};
    let events = scale_events();
    let db = TestDatabase::create().await;
    let gemini = GeminiStandIn::start().await;
    let application = Application::default();
    let sink_url = application.start().await;
    let dir = std::env::temp_dir().join(format!("gemhook-scale-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sinks.toml");
    std::fs::write(
        &config,
        http_sink("app", &sink_url, "[sinks.filter]\ntypes = [\"*\"]"),
    )
    .unwrap();
    let (config, results) = (
        config.to_string_lossy().into_owned(),
        dir.join("results").to_string_lossy().into_owned(),
    );
    let env = [
        ("GEMHOOK_DATABASE_URL", db.url.as_str()),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMHOOK_GEMINI_BASE_URL", gemini.url.as_str()),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_RESULTS_DIR", results.as_str()),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
        ("GEMHOOK_CONFIG", config.as_str()),
        ("GEMHOOK_DATABASE_MAX_CONNECTIONS", "8"),
        // Short, so that the killed worker's job is rescued within the test.
        ("GEMHOOK_WORKER_LEASE_SECS", "3"),
        ("GEMHOOK_POLL_INTERVAL_MS", "200"),
    ];
    let migrated = gemhook_command(&env).arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let mut receivers = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..3 {
        let (receiver, address) = Gemhook::start(&["serve", "--role", "receiver"], &env);
        receivers.push(receiver);
        addresses.push(address);
    }
    let client = reqwest::Client::new();

    // The first worker takes a download that stalls mid-body, and is killed during it.
    gemini.script(
        "slow",
        [
            Answer::StallAfter(bytes::Bytes::from_static(b"{\"half\":")),
            Answer::Body("{\"k\":\"slow\"}\n".into()),
        ],
    );
    let (mut doomed, _) = Gemhook::start(&["serve", "--role", "worker"], &env);
    assert_eq!(
        post_batch(&client, &addresses[0], &unique_id(), "slow").await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while gemini.hits_for("slow:") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gemini.hits_for("slow:"),
        1,
        "the first worker started the download"
    );
    let (mut survivor, _) = Gemhook::start(&["serve", "--role", "worker"], &env);

    // The load, through every receiver; a third of the events are sent twice at once, each
    // copy to a different receiver (as Gemini's retries of a slow answer do).
    let started = Instant::now();
    let mut sends = Vec::new();
    for i in 0..events {
        let file = format!("sc{i}");
        gemini.script(&file, [Answer::Body(format!("{{\"k\":{i}}}\n").into())]);
        let id = unique_id();
        let copies = if i % 3 == 0 { 2 } else { 1 };
        for copy in 0..copies {
            let address = addresses[(i + copy) % 3].clone();
            let (client, id, file) = (client.clone(), id.clone(), file.clone());
            sends.push(tokio::spawn(async move {
                post_batch(&client, &address, &id, &file).await
            }));
        }
        if i == events / 2 {
            doomed.kill();
        }
    }
    let mut statuses = Vec::new();
    for send in sends {
        statuses.push(send.await.unwrap());
    }
    let ingest_secs = started.elapsed().as_secs_f64();

    let total = events + 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (completed_jobs(&env) < total || application.received().len() < total)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "scale: {} deliveries ({events} events) through 3 receivers in {ingest_secs:.2} s \
         ({:.0}/s); all {total} jobs and hand-offs done after {drained_secs:.2} s",
        statuses.len(),
        statuses.len() as f64 / ingest_secs
    );
    let completed = completed_jobs(&env);
    let stored: Vec<(i64,)> = sqlx::query_as("SELECT count(*) FROM events")
        .fetch_all(&sqlx::PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    for process in receivers.iter_mut().chain([&mut survivor]) {
        process.terminate();
        assert!(process.wait_success(), "{}", process.output());
    }
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        statuses.iter().all(|s| *s == 200),
        "not all 200: {statuses:?}"
    );
    assert_eq!(stored[0].0 as usize, total, "every event stored once");
    assert_eq!(completed, total, "every job completed");
    assert_eq!(
        gemini.hits_for("slow:"),
        2,
        "the rescued job downloaded once more"
    );
    for i in 0..events {
        let hits = gemini.hits_for(&format!("sc{i}:"));
        // A job the killed worker had in flight is downloaded once more; no job three times.
        assert!(
            (1..=2).contains(&hits),
            "file sc{i} downloaded {hits} times"
        );
    }
    let received = application.received();
    let mut ids_per_event =
        std::collections::HashMap::<String, std::collections::HashSet<String>>::new();
    for (delivery_id, outcome) in &received {
        ids_per_event
            .entry(outcome["webhook_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(delivery_id.clone());
    }
    assert_eq!(ids_per_event.len(), total, "every outcome handed off");
    assert!(
        ids_per_event.values().all(|ids| ids.len() == 1),
        "one stable delivery id per outcome"
    );
}
