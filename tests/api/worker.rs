//! The worker: from a signed POST to a stored result, against a local Gemini stand-in; retries,
//! dead letters, leases, shutdown, replay.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;
use crate::process::{Gemhook, gemhook_command, gemhook_ok};
use crate::standin::{Answer, GeminiStandIn};

const RESULTS_JSONL: &str = concat!(
    r#"{"key":"1","response":{"text":"a"}}"#,
    "\n",
    r#"{"key":"2","error":{"code":400,"message":"bad request"}}"#,
    "\n",
    r#"{"key":"3","response":{"text":"c"}}"#,
    "\n",
);

async fn app_for(gemini: &GeminiStandIn) -> TestApp {
    let url = gemini.url.clone();
    spawn_app_with(move |f| f.merge(("gemini_base_url", url))).await
}

fn event(event_type: &str, data: Value) -> String {
    json!({"type": event_type, "version": "v1", "timestamp": "2026-11-23T12:00:00Z", "data": data})
        .to_string()
}

fn batch_event(batch: &str, file: &str) -> String {
    event(
        "batch.succeeded",
        json!({"id": format!("batches/{batch}"), "output_file_uri": format!("files/{file}")}),
    )
}

/// Posts a signed event and returns its webhook id.
async fn deliver(app: &TestApp, body: &str) -> String {
    let id = unique_id();
    assert_eq!(app.post_signed(&id, body).await.status(), 200);
    id
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_location(result: &Value) -> Vec<u8> {
    let location = result["location"].as_str().unwrap();
    std::fs::read(location.trim_start_matches("file://")).unwrap()
}

crate::on_both_backends! {
async fn batch_succeeded_downloads_the_results_file_and_records_its_summary() {
    let gemini = GeminiStandIn::start().await;
    gemini.script("f1", [Answer::Body(Bytes::from(RESULTS_JSONL))]);
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b1", "f1")).await;

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await, ("completed".into(), 1, 0));
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["outcome"], "stored");
    assert_eq!(result["resource_kind"], "batch");
    assert_eq!(result["size_bytes"], RESULTS_JSONL.len());
    assert_eq!(result["sha256"], sha256_hex(RESULTS_JSONL.as_bytes()));
    assert_eq!(result["summary"]["lines"], 3);
    assert_eq!(result["summary"]["error_lines"], 1);
    assert_eq!(read_location(&result), RESULTS_JSONL.as_bytes());
    let hits = gemini.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].api_key.as_deref(), Some(GEMINI_API_KEY));
}

async fn video_generated_downloads_the_video_from_output_file_uri_or_video_uri() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "vf1",
        [Answer::Body(Bytes::from_static(
            b"\x00\x00\x00\x18ftypmp42",
        ))],
    );
    gemini.script("vf2", [Answer::Body(Bytes::from_static(b"second video"))]);
    let app = app_for(&gemini).await;
    let first = deliver(
        &app,
        &event(
            "video.generated",
            json!({"id": "video_1", "output_file_uri": "files/vf1", "file_name": "files/vf1"}),
        ),
    )
    .await;
    let second = deliver(
        &app,
        &event(
            "video.generated",
            json!({"id": "video_2", "video_uri": "files/vf2"}),
        ),
    )
    .await;

    app.run_worker_until_idle().await;

    for (id, content) in [
        (first, &b"\x00\x00\x00\x18ftypmp42"[..]),
        (second, b"second video"),
    ] {
        let result = app.result_of(&id).await.unwrap();
        assert_eq!(result["resource_kind"], "video");
        assert_eq!(read_location(&result), content);
    }
}

async fn interaction_events_fetch_and_store_the_interaction_with_its_status() {
    let gemini = GeminiStandIn::start().await;
    let done = json!({"id": "v1_ChdDone", "status": "completed", "steps": [{"text": "hi"}]});
    let waiting = json!({"id": "v1_ChdWait", "status": "requires_action"});
    gemini.script("v1_ChdDone", [Answer::Body(Bytes::from(done.to_string()))]);
    gemini.script(
        "v1_ChdWait",
        [Answer::Body(Bytes::from(waiting.to_string()))],
    );
    let app = app_for(&gemini).await;
    let completed = deliver(
        &app,
        &event("interaction.completed", json!({"id": "v1_ChdDone"})),
    )
    .await;
    let requires = deliver(
        &app,
        &event("interaction.requires_action", json!({"id": "v1_ChdWait"})),
    )
    .await;

    app.run_worker_until_idle().await;

    let result = app.result_of(&completed).await.unwrap();
    assert_eq!(result["summary"]["status"], "completed");
    assert_eq!(
        serde_json::from_slice::<Value>(&read_location(&result)).unwrap(),
        done
    );
    let result = app.result_of(&requires).await.unwrap();
    assert_eq!(result["summary"]["status"], "requires_action");
}

async fn failures_expiries_and_unknown_types_are_recorded_without_any_request() {
    let gemini = GeminiStandIn::start().await;
    let app = app_for(&gemini).await;
    let failed = deliver(
        &app,
        &event(
            "batch.failed",
            json!({"id": "batches/9", "error_code": 3, "error_message": "quota"}),
        ),
    )
    .await;
    let expired = deliver(&app, &event("batch.expired", json!({"id": "batches/10"}))).await;
    let unknown = deliver(&app, &event("model.tuned", json!({"id": "t"}))).await;

    app.run_worker_until_idle().await;

    let result = app.result_of(&failed).await.unwrap();
    assert_eq!(result["outcome"], "recorded");
    assert_eq!(result["summary"]["error_code"], "3");
    assert_eq!(result["summary"]["error_message"], "quota");
    assert_eq!(
        app.result_of(&expired).await.unwrap()["outcome"],
        "recorded"
    );
    assert_eq!(app.result_of(&unknown).await.unwrap()["outcome"], "nothing");
    for id in [&failed, &expired, &unknown] {
        assert_eq!(app.job_of(id).await.0, "completed");
    }
    assert!(gemini.hits().is_empty());
}

async fn a_503_twice_then_success_completes_on_the_third_attempt_keeping_both_errors() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "flaky",
        [
            Answer::Status(503, None),
            Answer::Status(503, None),
            Answer::Body(Bytes::from(RESULTS_JSONL)),
        ],
    );
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b2", "flaky")).await;

    app.run_worker_until_idle().await;
    assert_eq!(app.job_of(&id).await, ("retryable".into(), 1, 1));
    app.make_retries_due().await;
    app.run_worker_until_idle().await;
    app.make_retries_due().await;
    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await, ("completed".into(), 3, 2));
    assert_eq!(gemini.hits_for("flaky"), 3);
}

async fn a_read_timeout_is_retried() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "slow",
        [Answer::Delay(
            Duration::from_secs(4),
            Bytes::from(RESULTS_JSONL),
        )],
    );
    let app = app_for(&gemini).await; // read timeout: 2 s
    let id = deliver(&app, &batch_event("b4", "slow")).await;
    app.run_worker_until_idle().await;

    let (state, attempt, errors) = app.job_of(&id).await;
    assert_eq!((state.as_str(), attempt, errors), ("retryable", 1, 1));
    let detail = gemhook_command(&[("GEMHOOK_DATABASE_URL", &app.db.url)])
        .args(["jobs", "list", "--state", "retryable", "--json"])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&detail.stdout).unwrap();
    let last_error = listed[0]["last_error"].as_str().unwrap();
    assert!(last_error.contains("timed out"), "{last_error}");
}

async fn a_404_is_discarded_after_its_attempts_with_every_error_kept() {
    let gemini = GeminiStandIn::start().await;
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b5", "gone")).await;

    for _ in 0..3 {
        app.run_worker_until_idle().await;
        app.make_retries_due().await;
    }

    assert_eq!(app.job_of(&id).await, ("discarded".into(), 3, 3));
    assert_eq!(gemini.hits_for("gone"), 3);
}

async fn a_pointer_to_a_foreign_host_is_discarded_and_that_host_never_sees_the_key() {
    let gemini = GeminiStandIn::start().await;
    let foreign = GeminiStandIn::start().await;
    foreign.script("loot", [Answer::Body(Bytes::from_static(b"x"))]);
    let app = app_for(&gemini).await;
    let id = deliver(
        &app,
        &event(
            "video.generated",
            json!({"id": "video_9", "output_file_uri": format!("{}/elsewhere/loot", foreign.url)}),
        ),
    )
    .await;

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await.0, "discarded");
    assert_eq!(
        app.result_of(&id).await.unwrap()["outcome"],
        "not_followable"
    );
    assert!(foreign.hits().is_empty());
}

async fn a_redirect_to_a_foreign_host_is_refused_and_the_key_never_follows_it() {
    let gemini = GeminiStandIn::start().await;
    let foreign = GeminiStandIn::start().await;
    foreign.script("loot", [Answer::Body(Bytes::from_static(b"x"))]);
    gemini.script(
        "bounce",
        [Answer::Redirect(format!("{}/elsewhere/loot", foreign.url))],
    );
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b6", "bounce")).await;

    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await.0, "discarded");
    assert!(
        foreign.hits().iter().all(|hit| hit.api_key.is_none()),
        "the key reached the foreign host"
    );
    assert!(foreign.hits().is_empty());
}

async fn the_same_resource_named_by_two_deliveries_is_downloaded_once() {
    let gemini = GeminiStandIn::start().await;
    gemini.script("same", [Answer::Body(Bytes::from(RESULTS_JSONL))]);
    let app = app_for(&gemini).await;
    let first = deliver(&app, &batch_event("b7", "same")).await;
    app.run_worker_until_idle().await;
    let second = deliver(&app, &batch_event("b7", "same")).await;

    app.run_worker_until_idle().await;

    assert_eq!(gemini.hits_for("same"), 1);
    let (a, b) = (
        app.result_of(&first).await.unwrap(),
        app.result_of(&second).await.unwrap(),
    );
    assert_eq!(a["location"], b["location"]);
    assert_eq!(b["summary"]["reused"], true);
}

async fn two_workers_racing_on_a_hundred_jobs_process_each_exactly_once() {
    let gemini = GeminiStandIn::start().await;
    let app = app_for(&gemini).await;
    for i in 0..100 {
        gemini.script(
            &format!("race{i}"),
            [Answer::Body(Bytes::from(format!("{{\"key\":\"{i}\"}}\n")))],
        );
        deliver(
            &app,
            &batch_event(&format!("race_b{i}"), &format!("race{i}")),
        )
        .await;
    }
    let (one, two) = (app.worker(), app.worker());

    let (a, b) = tokio::join!(one.run_until_idle(), two.run_until_idle());

    assert_eq!(a + b, 100, "attempts run in all");
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'completed' AND attempt = 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(completed, 100);
    for i in 0..100 {
        assert_eq!(gemini.hits_for(&format!("race{i}:")), 1, "race{i}");
    }
}

async fn a_discarded_job_can_be_retried_and_an_event_replayed() {
    let gemini = GeminiStandIn::start().await;
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b8", "late")).await;
    for _ in 0..3 {
        app.run_worker_until_idle().await;
        app.make_retries_due().await;
    }
    assert_eq!(app.job_of(&id).await.0, "discarded");
    gemini.script("late", [Answer::Body(Bytes::from(RESULTS_JSONL))]);
    let env = [("GEMHOOK_DATABASE_URL", app.db.url.as_str())];

    gemhook_ok(&env, &["jobs", "retry", "--discarded"]);
    app.run_worker_until_idle().await;
    assert_eq!(app.job_of(&id).await.0, "completed");

    let replay = gemhook_command(&env)
        .args(["replay", &id])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(app.job_of(&id).await.0, "available");
    app.run_worker_until_idle().await;

    assert_eq!(app.job_of(&id).await.0, "completed");
    assert_eq!(
        gemini.hits_for("late"),
        5,
        "3 misses, the retry, the replay"
    );
    let shown = gemhook_command(&env)
        .args(["jobs", "list", "--json"])
        .output()
        .unwrap();
    let jobs: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(jobs[0]["webhook_id"], id.as_str());
}

async fn graceful_shutdown_releases_a_running_job_for_another_worker() {
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "stuck",
        [
            Answer::StallAfter(Bytes::from_static(b"{\"key\":\"1\"}\n")),
            Answer::Body(Bytes::from(RESULTS_JSONL)),
        ],
    );
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| {
        f.merge(("gemini_base_url", url))
            .merge(("gemini_read_timeout_secs", 30))
            .merge(("shutdown_grace_secs", 1))
    })
    .await;
    let id = deliver(&app, &batch_event("b9", "stuck")).await;
    let worker = app.worker();
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let worker = worker.clone();
        let stop = stop.clone();
        async move { worker.run(stop).await }
    });
    wait_until(|| gemini.hits_for("stuck") == 1).await;
    assert_eq!(app.job_of(&id).await.0, "running");

    stop.cancel();
    running.await.unwrap();

    assert_eq!(app.job_of(&id).await, ("available".into(), 0, 0));
    app.run_worker_until_idle().await;
    assert_eq!(app.job_of(&id).await, ("completed".into(), 1, 0));
}
}

#[tokio::test]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn a_429_with_retry_after_schedules_the_retry_no_earlier_than_asked() {
    crate::require_postgres!();
    let gemini = GeminiStandIn::start().await;
    gemini.script("limited", [Answer::Status(429, Some(120))]);
    let app = app_for(&gemini).await;
    let id = deliver(&app, &batch_event("b3", "limited")).await;

    app.run_worker_until_idle().await;

    let wait: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM j.scheduled_at - now())::float8 FROM jobs j
         JOIN events e ON e.id = j.event_id WHERE e.webhook_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(app.job_of(&id).await.0, "retryable");
    assert!((115.0..=121.0).contains(&wait), "retry in {wait} s");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn a_worker_killed_mid_download_leaves_no_partial_result_and_another_finishes_the_job() {
    crate::require_postgres!();
    let gemini = GeminiStandIn::start().await;
    gemini.script(
        "killed",
        [
            Answer::StallAfter(Bytes::from_static(b"{\"key\":\"partial\"}\n")),
            Answer::Body(Bytes::from(RESULTS_JSONL)),
        ],
    );
    let url = gemini.url.clone();
    let app = spawn_app_with(move |f| {
        f.merge(("gemini_base_url", url))
            .merge(("worker_lease_secs", 2))
    })
    .await;
    let id = deliver(&app, &batch_event("b10", "killed")).await;
    let results_dir = app.results_dir.to_string_lossy().into_owned();
    let (mut process, _) = Gemhook::start(
        &["serve", "--role", "worker"],
        &[
            ("GEMHOOK_DATABASE_URL", &app.db.url),
            ("GEMHOOK_GEMINI_BASE_URL", &gemini.url),
            ("GEMINI_API_KEY", GEMINI_API_KEY),
            ("GEMHOOK_RESULTS_DIR", &results_dir),
            ("GEMHOOK_WORKER_LEASE_SECS", "2"),
            ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
        ],
    );
    wait_until(|| gemini.hits_for("killed") == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    process.kill();

    let final_path = app.results_dir.join("batches/b10/results.jsonl");
    assert!(
        !final_path.exists(),
        "a partial file is visible at the final key"
    );
    assert_eq!(
        app.job_of(&id).await.0,
        "running",
        "the dead worker still holds the lease"
    );
    app.expire_leases("jobs").await;
    app.run_worker_until_idle().await;

    let (state, attempt, errors) = app.job_of(&id).await;
    assert_eq!((state.as_str(), attempt, errors), ("completed", 2, 1));
    assert_eq!(
        std::fs::read(&final_path).unwrap(),
        RESULTS_JSONL.as_bytes()
    );
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(gemhook_postgres_tests),
    ignore = "needs Postgres: set GEMHOOK_TEST_DATABASE_URL"
)]
async fn a_200_mb_download_streams_through_a_worker_process_in_bounded_memory() {
    crate::require_postgres!();
    let gemini = GeminiStandIn::start().await;
    // ~200 MB of ~1 KiB JSONL lines, generated as it is sent.
    gemini.script("huge", [Answer::Generated { lines: 200_000 }]);
    let app = app_for(&gemini).await;
    let results_dir = app.results_dir.to_string_lossy().into_owned();
    let (mut process, _) = Gemhook::start(
        &["serve", "--role", "worker"],
        &[
            ("GEMHOOK_DATABASE_URL", &app.db.url),
            ("GEMHOOK_GEMINI_BASE_URL", &gemini.url),
            ("GEMINI_API_KEY", GEMINI_API_KEY),
            ("GEMHOOK_RESULTS_DIR", &results_dir),
            ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
            ("GEMHOOK_POLL_INTERVAL_MS", "100"),
        ],
    );
    let baseline = rss_kib(process.pid(), "VmRSS");
    let id = deliver(&app, &batch_event("b11", "huge")).await;

    for _ in 0..1200 {
        if app.job_of(&id).await.0 == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak = rss_kib(process.pid(), "VmHWM");
    process.terminate();
    assert!(process.wait_success());

    assert_eq!(app.job_of(&id).await.0, "completed");
    let result = app.result_of(&id).await.unwrap();
    assert_eq!(result["summary"]["lines"], 200_000);
    assert!(result["size_bytes"].as_i64().unwrap() > 200_000_000);
    let growth_mib = (peak - baseline) as f64 / 1024.0;
    println!(
        "200 MB download: baseline RSS {baseline} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB"
    );
    assert!(growth_mib < 64.0, "peak RSS grew by {growth_mib:.1} MiB");
}

/// A line of /proc/<pid>/status, in KiB (`VmRSS` now, `VmHWM` the peak).
fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..400 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within 10 s");
}
