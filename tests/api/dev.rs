//! `gemhook dev`: the Gemini stand-in on its own, and the real binary taking every catalogue
//! event from `gemhook send` to a stored result and a printed outcome.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::TryStreamExt;
use gemhook::config::Redacted;
use gemhook::envelope::KNOWN_TYPES;
use gemhook::gemini::{ApiKey, ClientSettings, GeminiClient};
use gemhook::tools::dev::OUTCOME_PREFIX;
use gemhook::tools::gemini_dev::resources::{self, InteractionStatus};
use gemhook::tools::gemini_dev::{
    DEV_API_KEY, GeminiStandIn, StandInError, StandInSettings, bodies,
};
use serde_json::{Value, json};

use crate::process::{Gemhook, gemhook_command};

const KEY: &str = "stand-in-test-key";

/// A stand-in on a free loopback port, serving until the test ends.
async fn stand_in() -> String {
    let stand_in = GeminiStandIn::bind(
        "127.0.0.1:0".parse().unwrap(),
        StandInSettings {
            api_key: Redacted::new(KEY),
            batch_lines: None,
        },
    )
    .await
    .unwrap();
    let url = stand_in.url().to_owned();
    tokio::spawn(stand_in.run_until_stopped(std::future::pending()));
    url
}

async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(key) = key {
        request = request.header("x-goog-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn client(base_url: &str, key: &str) -> GeminiClient {
    GeminiClient::new(ClientSettings {
        base_url: base_url.to_owned(),
        api_key: ApiKey::new(key),
        allowed_hosts: vec![],
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

async fn downloaded(download: gemhook::gemini::Download) -> Vec<u8> {
    download
        .into_stream()
        .try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_stand_in_answers_a_missing_or_wrong_key_as_google_does() {
    let base = stand_in().await;
    let url = format!("{base}/v1beta/batches/abc");

    let (status, body) = get(&url, None).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], 403);
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert!(body["error"]["message"].is_string());

    let (status, body) = get(&url, Some("AIza-not-this-one")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(body["error"]["details"][0]["reason"], "API_KEY_INVALID");

    // The worker's client sees a permanent failure, and never the key in its message.
    let error = client(&base, "AIza-not-this-one")
        .download_file("batch-abc")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(reqwest::StatusCode::BAD_REQUEST));
    assert!(!error.is_retryable());
    assert!(!error.to_string().contains("AIza-not-this-one"));
}

#[tokio::test]
async fn the_stand_in_answers_unknown_resources_with_googles_404() {
    let base = stand_in().await;
    let not_found = json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}});
    for path in [
        "/download/v1beta/files/nope:download?alt=media",
        "/download/v1beta/files/batch-abc-failed:download?alt=media",
        "/v1beta/files/batch-abc-missing",
        "/v1beta/batches/abc-missing",
        "/v1beta/interactions/v1_ChdAbc-missing",
        "/v1beta/models/veo-3.1-generate-preview/operations/op1-missing",
        "/v1beta/no-such-collection/x",
    ] {
        let (status, body) = get(&format!("{base}{path}"), Some(KEY)).await;
        assert_eq!((status, &body), (404, &not_found), "{path}");
    }
    let error = client(&base, KEY)
        .get_interaction("v1_ChdAbc-missing")
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(reqwest::StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn the_worker_client_gets_each_resource_from_the_stand_in_as_its_id_says() {
    let base = stand_in().await;
    let gemini = client(&base, KEY);

    let results = downloaded(gemini.download_file("batch-abc").await.unwrap()).await;
    assert_eq!(results, bodies::batch_results("abc"));

    // A video download redirects to its media URL on the same origin; the client follows it.
    let video = downloaded(gemini.download_file("video-op1").await.unwrap()).await;
    assert_eq!(video, bodies::video("op1"));

    let waiting = gemini
        .get_interaction("v1_ChdAbc-requires_action")
        .await
        .unwrap();
    assert_eq!(waiting.status.as_deref(), Some("requires_action"));
    assert_eq!(
        waiting.json,
        bodies::interaction(
            "v1_ChdAbc-requires_action",
            InteractionStatus::RequiresAction
        )
    );

    let (status, batch) = get(&format!("{base}/v1beta/batches/abc-expired"), Some(KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(batch["metadata"]["state"], "JOB_STATE_EXPIRED");
    let (_, operation) = get(
        &format!("{base}/v1beta/models/veo-3.1-generate-preview/operations/op1"),
        Some(KEY),
    )
    .await;
    assert_eq!(
        operation["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"],
        format!("{base}/v1beta/files/video-op1:download?alt=media")
    );
}

#[tokio::test]
async fn the_stand_in_refuses_to_listen_beyond_loopback() {
    let result = GeminiStandIn::bind(
        "0.0.0.0:0".parse().unwrap(),
        StandInSettings {
            api_key: Redacted::new(KEY),
            batch_lines: None,
        },
    )
    .await;
    assert!(matches!(result, Err(StandInError::NotLoopback { .. })));
}

/// A fresh directory for one `gemhook dev` session, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("gemhook-dev-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gemhook CLI command run in `dir` against the dev session's database.
fn cli(dir: &Path, args: &[&str]) -> Value {
    let output = gemhook_command(&[("GEMHOOK_DATABASE_URL", "sqlite://./data/dev/gemhook.db")])
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The banner's `gemhook send batch.succeeded ...` line, split into words.
fn printed_send_command(output: &str) -> Vec<String> {
    let line = output
        .lines()
        .find(|line| line.contains(" send batch.succeeded --url "))
        .unwrap_or_else(|| panic!("no send command in the banner: {output}"));
    line.split_whitespace().map(str::to_owned).collect()
}

fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemhook_dev_takes_every_catalogue_event_from_send_to_a_stored_result_and_a_printed_outcome()
 {
    let dir = TempDir::new();
    let mut command = gemhook_command(&[]);
    command.current_dir(&dir.0);
    let (mut dev, _) = Gemhook::from_command(command, &["dev", "--gemini-listen", "127.0.0.1:0"]);

    // Run the exact command the banner prints, once per catalogue type.
    let send = printed_send_command(&dev.output_containing(" send batch.succeeded --url "));
    assert!(send[6].starts_with("whsec_"), "a session secret: {send:?}");
    let mut sent = HashMap::new();
    for &event_type in KNOWN_TYPES {
        let mut args = send[1..].to_vec();
        args[1] = event_type.to_owned();
        let output = Command::new(&send[0])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&dir.0)
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{event_type}: {text}");
        assert!(text.contains(r#"→ 200 {"status":"accepted"}"#), "{text}");
        let webhook_id = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix("webhook-id="))
            .unwrap()
            .to_owned();
        sent.insert(event_type, webhook_id);
    }

    let printed = |id: &str| {
        dev.output()
            .lines()
            .find(|line| line.starts_with(&format!("{OUTCOME_PREFIX} {id} ")))
            .map(str::to_owned)
    };
    for _ in 0..300 {
        if sent.values().all(|id| printed(id).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs = cli(&dir.0, &["jobs", "list", "--json", "--limit", "50"]);

    for (&event_type, webhook_id) in &sent {
        let line = printed(webhook_id)
            .unwrap_or_else(|| panic!("no outcome printed for {event_type}: {}", dev.output()));
        assert!(line.contains(&format!(" {event_type} ")), "{line}");
        assert!(line.contains("→ completed: "), "{line}");

        let event = cli(&dir.0, &["events", "show", webhook_id, "--json"]);
        assert_eq!(event["status"], "accepted", "{event_type}");
        let body: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
        let resource_id = body["data"]["id"].as_str().unwrap().to_owned();

        let job = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["webhook_id"] == webhook_id.as_str())
            .unwrap();
        assert_eq!(job["state"], "completed", "{event_type}: {job}");
        let shown = cli(&dir.0, &["jobs", "show", &job["id"].to_string(), "--json"]);
        let result = &shown["result"];

        let stored = |result: &Value| {
            assert_eq!(result["outcome"], "stored", "{event_type}: {result}");
            let location = result["location"].as_str().unwrap();
            assert!(line.contains(location), "{line}");
            std::fs::read(location.trim_start_matches("file://")).unwrap()
        };
        match event_type {
            "batch.succeeded" => {
                let content = stored(result);
                assert_eq!(content, bodies::batch_results(last_segment(&resource_id)));
                assert_eq!(result["summary"]["lines"], bodies::BATCH_RESULT_LINES);
                assert!(line.contains("4 lines, 1 with an error"), "{line}");
            }
            "video.generated" => {
                let content = stored(result);
                assert_eq!(content, bodies::video(last_segment(&resource_id)));
            }
            "interaction.completed" | "interaction.requires_action" => {
                let content: Value = serde_json::from_slice(&stored(result)).unwrap();
                let status = resources::interaction_status(&resource_id).unwrap();
                assert_eq!(content, bodies::interaction(&resource_id, status));
                assert_eq!(
                    Some(status.as_str()),
                    event_type.strip_prefix("interaction.")
                );
                assert!(
                    line.contains(&format!("status {}", status.as_str())),
                    "{line}"
                );
            }
            _ => {
                assert_eq!(result["outcome"], "recorded", "{event_type}: {result}");
                assert!(line.contains("recorded"), "{line}");
            }
        }
    }

    dev.terminate();
    assert!(dev.wait_success(), "exit 0 after SIGTERM");
    let output = dev.output();
    assert!(output.contains("gemini stand-in answered"), "{output}");
    assert!(!output.contains(DEV_API_KEY), "the key reached the output");
}
