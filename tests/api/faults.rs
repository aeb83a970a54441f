//! Faults under load, against the real binary: whatever happens to the receiver or its
//! database, every delivery answered 2xx is stored, and when it cannot store it answers 503 with
//! Retry-After within a bounded time, never a hang. The short version of `bench/faults`.
//!
//! Each test runs `gemhook bench ingest`'s load generator (the library function) against a
//! `gemhook serve --role receiver` process, records every acknowledged `webhook-id` and every
//! answer, injects one fault, and then compares the acknowledged ids with the database. The
//! faults that stop or freeze Postgres use a private cluster ([`crate::private_pg`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gemhook::tools::bench::{IngestPlan, IngestReport, RecordFiles};
use gemhook::verify::WebhookSecret;

use crate::helpers::*;
use crate::process::Gemhook;

/// The longest any delivery may wait for its answer. Generous for a loaded 2-core machine and a
/// debug build; far below the freeze below, so a receiver that waits out the freeze fails.
const ANSWER_BOUND: Duration = Duration::from_secs(6);

/// How long Postgres stays frozen: longer than [`ANSWER_BOUND`], or a hang could pass.
const FREEZE: Duration = Duration::from_secs(8);

/// The ack-path deadline the receivers are started with (`ack_deadline_ms`): well inside
/// [`ANSWER_BOUND`]. A build without that setting ignores it.
const ACK_DEADLINE_MS: &str = "2000";

/// `gemhook serve --role receiver` on `database_url`: no worker (its claims would compete with
/// the ack path for the database), no JWKS fetch (nothing leaves 127.0.0.1).
fn start_receiver(database_url: &str) -> (Gemhook, String) {
    Gemhook::start(
        &["serve", "--role", "receiver"],
        &[
            ("GEMHOOK_DATABASE_URL", database_url),
            ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
            ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
            ("GEMHOOK_DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
            ("GEMHOOK_ACK_DEADLINE_MS", ACK_DEADLINE_MS),
            // Quiet, but for the line the harness waits for ("gemhook listening").
            ("RUST_LOG", "warn,gemhook::startup=info"),
        ],
    )
}

/// A load running in the background, writing down its answers.
struct Load {
    task: tokio::task::JoinHandle<IngestReport>,
    files: RecordFiles,
}

/// What a load saw.
struct Seen {
    report: IngestReport,
    /// Every webhook-id answered 2xx.
    acked: HashSet<String>,
    answers: Vec<Logged>,
}

/// One line of the answer log.
struct Logged {
    sent_unix_ms: u64,
    took: Duration,
    answer: String,
}

/// Starts `rate` deliveries per second for `seconds`, at most `concurrency` in flight.
fn start_load(address: &str, rate: f64, seconds: f64, concurrency: usize) -> Load {
    let name = uuid::Uuid::new_v4().simple().to_string();
    let temp = |what: &str| -> PathBuf {
        std::env::temp_dir().join(format!("gemhook-faults-{name}.{what}"))
    };
    let files = RecordFiles {
        acked_ids: Some(temp("acked")),
        answer_log: Some(temp("answers")),
    };
    let plan = IngestPlan {
        url: format!("{address}/webhooks/gemini"),
        secret: WebhookSecret::parse(SECRET).unwrap(),
        requests: (rate * seconds) as u64,
        concurrency,
        rate: Some(rate),
        duplicate_share: 0.0,
        event_type: "batch.succeeded".into(),
        // Past the bound, so a hang is measured as a slow answer (or counted as a timeout)
        // rather than waited on forever.
        request_timeout: ANSWER_BOUND * 2,
        record: files.clone(),
    };
    let task = tokio::spawn(async move { gemhook::tools::bench::ingest(plan).await.unwrap() });
    Load { task, files }
}

impl Load {
    async fn finish(self) -> Seen {
        let report = self.task.await.unwrap();
        let read = |path: &Option<PathBuf>| {
            let path = path.as_ref().unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            let _ = std::fs::remove_file(path);
            text
        };
        let acked = read(&self.files.acked_ids)
            .lines()
            .map(str::to_owned)
            .collect();
        let answers = read(&self.files.answer_log)
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                Logged {
                    sent_unix_ms: fields[0].parse().unwrap(),
                    took: Duration::from_micros(fields[1].parse().unwrap()),
                    answer: fields[2].to_owned(),
                }
            })
            .collect();
        Seen {
            report,
            acked,
            answers,
        }
    }
}

impl Seen {
    /// How many requests sent in `[from, to)` (ms since the epoch) got `answer`.
    fn sent_between(&self, from: u64, to: u64, answer: &str) -> usize {
        self.answers
            .iter()
            .filter(|a| (from..to).contains(&a.sent_unix_ms) && a.answer == answer)
            .count()
    }

    /// The longest any request waited for its answer (or for giving up).
    fn slowest(&self) -> Duration {
        self.answers
            .iter()
            .map(|a| a.took)
            .max()
            .unwrap_or_default()
    }

    /// Milliseconds from `since` to the first accepted delivery sent after it.
    fn first_accepted_after(&self, since: u64) -> Option<u64> {
        self.answers
            .iter()
            .filter(|a| a.sent_unix_ms >= since && a.answer == "accepted")
            .map(|a| a.sent_unix_ms + a.took.as_millis() as u64 - since)
            .min()
    }

    /// Requests sent from a second after `since` on that were not accepted: once the fault is
    /// gone and the receiver has had a moment, every delivery must be stored again.
    fn not_accepted_a_second_after(&self, since: u64) -> usize {
        self.answers
            .iter()
            .filter(|a| a.sent_unix_ms >= since + 1000 && a.answer != "accepted")
            .count()
    }

    fn summary(&self) -> String {
        let r = &self.report;
        format!(
            "{} requests: {} accepted, {} 503, {} 503 without Retry-After, {} other, \
             {} connect failed, {} not sent, {} reset after sent, {} timed out; slowest {:?}",
            r.requests,
            r.accepted,
            r.unavailable,
            r.unavailable_without_retry_after,
            r.other_status,
            r.connect_failed,
            r.not_sent,
            r.reset_after_sent,
            r.timed_out,
            self.slowest()
        )
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Posts fresh deliveries every 100 ms until one is answered 200 (each attempt bounded);
/// returns its id and how long that took, or `None` after `within`.
async fn wait_for_200(address: &str, within: Duration) -> Option<(String, Duration)> {
    let client = reqwest::Client::builder()
        .timeout(ANSWER_BOUND)
        .build()
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < within {
        let id = unique_id();
        let url = format!("{address}/webhooks/gemini");
        let answered = signed_request(&client, &url, &id, batch_succeeded("recovery"))
            .send()
            .await;
        if answered.is_ok_and(|response| response.status() == 200) {
            return Some((id, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn pool(database_url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .unwrap()
}

/// Every stored webhook-id.
async fn stored_ids(database_url: &str) -> HashSet<String> {
    let pool = pool(database_url).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT webhook_id FROM events")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids.into_iter().collect()
}

/// Events without their job: half of a delivery's transaction, which must never be visible.
async fn events_without_a_job(database_url: &str) -> i64 {
    let pool = pool(database_url).await;
    let count = sqlx::query_scalar(
        "SELECT count(*) FROM events e LEFT JOIN jobs j ON j.event_id = e.id WHERE j.id IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    count
}

fn assert_acknowledged_were_stored(acked: &HashSet<String>, stored: &HashSet<String>) {
    let missing: Vec<&String> = acked.difference(stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged deliveries are not stored, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

crate::on_both_backends! {
    /// SIGKILL runs no shutdown code: whatever was answered 200 must already be on disk.
    async fn a_receiver_killed_under_load_loses_no_acknowledged_delivery() {
        let db = TestDatabase::create().await;
        let (mut receiver, address) = start_receiver(&db.url);
        let load = start_load(&address, 300.0, 3.0, 32);
        tokio::time::sleep(Duration::from_millis(1200)).await;

        receiver.kill();
        let (mut restarted, address) = start_receiver(&db.url);
        let mut seen = load.finish().await;
        let recovered = wait_for_200(&address, Duration::from_secs(20)).await;
        restarted.terminate();
        assert!(restarted.wait_success());
        if let Some((id, _)) = &recovered {
            seen.acked.insert(id.clone());
        }
        eprintln!("kill -9: {}", seen.summary());

        let r = &seen.report;
        assert!(r.accepted > 0, "deliveries were accepted before the kill: {}", seen.summary());
        assert!(
            r.connect_failed + r.not_sent + r.reset_after_sent > 0,
            "the kill happened under load: {}",
            seen.summary()
        );
        assert!(recovered.is_some(), "the restarted receiver answers 200");
        assert_acknowledged_were_stored(&seen.acked, &stored_ids(&db.url).await);
        assert_eq!(events_without_a_job(&db.url).await, 0);
    }

    /// A graceful stop: the listener closes, but every request already read is answered.
    async fn sigterm_under_load_answers_every_request_it_was_sent_then_exits_zero() {
        let db = TestDatabase::create().await;
        let (mut receiver, address) = start_receiver(&db.url);
        // More than either backend commits here in a debug build: requests queue in flight.
        let load = start_load(&address, 2000.0, 2.0, 64);
        tokio::time::sleep(Duration::from_millis(800)).await;

        receiver.terminate();
        let exited_zero = receiver.wait_success();
        let seen = load.finish().await;
        eprintln!("SIGTERM: {}", seen.summary());

        assert!(exited_zero, "exit status 0 after SIGTERM");
        let r = &seen.report;
        assert!(r.accepted > 0, "{}", seen.summary());
        assert_eq!(
            r.reset_after_sent, 0,
            "requests written in full were dropped without an answer: {}",
            seen.summary()
        );
        assert_eq!(r.timed_out, 0, "{}", seen.summary());
        assert_acknowledged_were_stored(&seen.acked, &stored_ids(&db.url).await);
        assert_eq!(events_without_a_job(&db.url).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_under_load_is_answered_503_with_retry_after_and_recovers_without_restarting_the_receiver()
 {
    let cluster = crate::private_cluster_or_skip!();
    let url = cluster.create_database("faults");
    let (mut receiver, address) = start_receiver(&url);
    let load = start_load(&address, 200.0, 6.0, 32);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let down_at = unix_ms();
    cluster.stop_server("fast");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_server();
    let up_at = unix_ms();
    let mut seen = load.finish().await;
    let probe = wait_for_200(&address, Duration::from_secs(20)).await;
    if let Some((id, _)) = &probe {
        seen.acked.insert(id.clone());
    }
    let recovered_ms = seen
        .first_accepted_after(up_at)
        .or(probe.as_ref().map(|(_, took)| took.as_millis() as u64));
    eprintln!(
        "Postgres restart: {}; recovered in {recovered_ms:?} ms",
        seen.summary()
    );

    let r = &seen.report;
    assert!(
        seen.sent_between(down_at, up_at, "503") > 0,
        "503 with Retry-After while Postgres was down: {}",
        seen.summary()
    );
    assert_eq!(r.unavailable_without_retry_after, 0, "{}", seen.summary());
    assert_eq!(
        (
            r.other_status,
            r.connect_failed,
            r.reset_after_sent,
            r.timed_out
        ),
        (0, 0, 0, 0),
        "only 200s and 503s: {}",
        seen.summary()
    );
    assert!(seen.slowest() <= ANSWER_BOUND, "{}", seen.summary());
    assert!(receiver.is_running(), "the receiver was not restarted");
    assert!(recovered_ms.is_some(), "200 again after Postgres came back");
    assert_eq!(
        seen.not_accepted_a_second_after(up_at),
        0,
        "{}",
        seen.summary()
    );
    assert_acknowledged_were_stored(&seen.acked, &stored_ids(&url).await);
    assert_eq!(events_without_a_job(&url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_postgres_gets_every_delivery_answered_within_a_bound_and_200_again_after_sigcont()
{
    let cluster = crate::private_cluster_or_skip!();
    let url = cluster.create_database("faults");
    let (mut receiver, address) = start_receiver(&url);
    let load = start_load(&address, 200.0, 3.0 + FREEZE.as_secs_f64(), 64);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Freeze with an insert in flight, for certain: a freeze that lands between two batches is
    // met by the next connection check, which the acquire timeout bounds; a statement already
    // sent is bounded only by a deadline on the ack path. A lock held across the freeze makes
    // the receiver's next insert wait, then Postgres freezes, and the lock goes after the thaw.
    let lock = cluster.block_writes_to("faults", "events");
    let frozen_at = unix_ms();
    cluster.freeze();
    tokio::time::sleep(FREEZE).await;
    cluster.thaw();
    let thawed_at = unix_ms();
    lock.release();
    let mut seen = load.finish().await;
    let probe = wait_for_200(&address, Duration::from_secs(20)).await;
    if let Some((id, _)) = &probe {
        seen.acked.insert(id.clone());
    }
    eprintln!("Postgres frozen: {}", seen.summary());

    let r = &seen.report;
    assert!(
        seen.slowest() <= ANSWER_BOUND && r.timed_out == 0,
        "every delivery is answered within {ANSWER_BOUND:?} while Postgres is frozen for \
         {FREEZE:?}: {}",
        seen.summary()
    );
    assert!(
        seen.sent_between(frozen_at, thawed_at, "503") > 0,
        "503 with Retry-After while frozen: {}",
        seen.summary()
    );
    assert_eq!(r.unavailable_without_retry_after, 0, "{}", seen.summary());
    assert!(receiver.is_running());
    assert!(probe.is_some(), "200 again after SIGCONT");
    assert_eq!(
        seen.not_accepted_a_second_after(thawed_at),
        0,
        "{}",
        seen.summary()
    );
    assert_acknowledged_were_stored(&seen.acked, &stored_ids(&url).await);
    assert_eq!(events_without_a_job(&url).await, 0);
}

/// A small tmpfs of the test's own, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "4m"). Mounting needs root (or CAP_SYS_ADMIN); without
    /// it the test is skipped with a notice, except under `CI=true`, where it fails.
    fn mount_or_skip(size: &str) -> Option<SmallDisk> {
        let path = std::env::temp_dir().join(format!(
            "gemhook-small-disk-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(SmallDisk {
                filler: path.join("filler"),
                path,
            }),
            other => {
                let _ = std::fs::remove_dir(&path);
                let why = match other {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                    Err(error) => error.to_string(),
                };
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("CI=true but a tmpfs cannot be mounted for the disk-full test: {why}");
                }
                eprintln!("notice: cannot mount a tmpfs ({why}); skipping the disk-full test");
                None
            }
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(&self.filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        // What is left is less than a chunk; take it byte by byte.
        while file.write_all(&[0]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(&self.path)
            .output()
            .is_ok_and(|output| output.status.success());
        if !unmounted {
            // Still busy (a process of a failed test holds a file): detach it now, so no mount
            // is left behind; the kernel frees it when the last file closes.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .output();
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_on_a_full_disk_answers_503_keeps_every_delivery_whole_and_recovers_once_space_returns()
 {
    let Some(disk) = SmallDisk::mount_or_skip("4m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path.join("gemhook.db").display());
    let (mut receiver, address) = start_receiver(&url);
    let before = wait_for_200(&address, Duration::from_secs(10)).await;
    assert!(before.is_some(), "the receiver works before the disk fills");

    disk.fill();
    let mut seen = load_until_503(&address).await;
    let pool = pool(&url).await;
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let half_written = events_without_a_job(&url).await;
    disk.free();
    let recovered = wait_for_200(&address, Duration::from_secs(20)).await;
    // Not just one: one at a time, so each takes the pool's next idle connection, and every
    // connection must have come back from the full disk.
    let afterwards = start_load(&address, 50.0, 1.0, 1).finish().await;
    for (id, _) in before.iter().chain(recovered.iter()) {
        seen.acked.insert(id.clone());
    }
    seen.acked.extend(afterwards.acked.iter().cloned());
    let stored = stored_ids(&url).await;
    receiver.terminate();
    assert!(receiver.wait_success());
    eprintln!("disk full: {}", seen.summary());

    let r = &seen.report;
    assert!(
        r.unavailable > 0,
        "503 with Retry-After on a full disk: {}",
        seen.summary()
    );
    assert_eq!(
        (
            r.unavailable_without_retry_after,
            r.other_status,
            r.timed_out
        ),
        (0, 0, 0),
        "{}",
        seen.summary()
    );
    assert!(seen.slowest() <= ANSWER_BOUND, "{}", seen.summary());
    assert_eq!(integrity, "ok");
    assert_eq!(half_written, 0, "no event without its job");
    assert!(recovered.is_some(), "200 again once space returns");
    assert_eq!(
        afterwards.report.accepted,
        afterwards.report.requests,
        "every delivery is stored again once space returns: {}",
        afterwards.summary()
    );
    assert_acknowledged_were_stored(&seen.acked, &stored);
}

/// Loads the receiver in rounds of 100 deliveries until a round saw a 503 (at most 10 rounds:
/// SQLite may first fill space it had already allocated for its WAL).
async fn load_until_503(address: &str) -> Seen {
    let mut all: Option<Seen> = None;
    for _ in 0..10 {
        let round = start_load(address, 200.0, 0.5, 8).finish().await;
        let saw_503 = round.report.unavailable + round.report.unavailable_without_retry_after > 0;
        all = Some(match all {
            None => round,
            Some(mut all) => {
                all.acked.extend(round.acked);
                all.answers.extend(round.answers);
                let (a, b) = (&mut all.report, &round.report);
                a.requests += b.requests;
                a.accepted += b.accepted;
                a.duplicate += b.duplicate;
                a.failed += b.failed;
                a.unavailable += b.unavailable;
                a.unavailable_without_retry_after += b.unavailable_without_retry_after;
                a.other_status += b.other_status;
                a.connect_failed += b.connect_failed;
                a.not_sent += b.not_sent;
                a.reset_after_sent += b.reset_after_sent;
                a.timed_out += b.timed_out;
                all
            }
        });
        if saw_503 {
            break;
        }
    }
    all.expect("at least one round")
}
