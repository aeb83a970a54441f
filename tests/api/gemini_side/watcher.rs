//! The watcher in `gemhook serve`: the webhooks' states in the metric and `/readyz`, a warning
//! when Gemini disabled one, and a failing read that never affects readiness.

use crate::process::Gemhook;

use super::*;

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of `gemhook_gemini_webhook_state{id, state}` in a scrape, if present.
fn state_gauge(metrics: &str, id: &str, state: &str) -> Option<f64> {
    let id_label = format!("id=\"{id}\"");
    let state_label = format!("state=\"{state}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("gemhook_gemini_webhook_state{"))
        .find(|l| l.contains(&id_label) && l.contains(&state_label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `check` on `/readyz`'s body until it holds (10 s at most).
async fn readyz_until(address: &str, check: impl Fn(&Value) -> bool) -> (u16, Value) {
    for _ in 0..100 {
        let (status, body) = get_text(&format!("{address}/readyz")).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        if check(&body) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never showed the expected webhook states");
}

crate::on_both_backends! {
async fn gemini_side_the_watcher_exposes_each_webhooks_state_and_warns_about_a_disabled_one() {
    let db = TestDatabase::create().await;
    let service = WebhookServiceStandIn::start().await.with_webhooks([
        webhook("wh_ok", "enabled"),
        webhook("wh_bad", "disabled_due_to_failed_deliveries"),
        camel_case_webhook("wh_off", "DISABLED"),
    ]);
    let (mut server, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_GEMINI_BASE_URL", &service.url),
        ("GEMHOOK_WEBHOOK_WATCH_INTERVAL_SECS", "1"),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
    ]);

    let (status, ready) = readyz_until(&address, |body| {
        body["gemini_webhooks"]["webhooks"].as_array().is_some_and(|w| w.len() == 3)
    })
    .await;
    let (_, metrics) = get_text(&format!("{}/metrics", server.console_address())).await;

    assert_eq!(status, 200);
    let states: Vec<(&str, &str)> = ready["gemini_webhooks"]["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["id"].as_str().unwrap(), w["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("wh_ok", "enabled"),
            ("wh_bad", "disabled_due_to_failed_deliveries"),
            ("wh_off", "disabled")
        ]
    );
    assert_eq!(ready["gemini_webhooks"]["last_error"], Value::Null);
    assert_eq!(state_gauge(&metrics, "wh_bad", "disabled_due_to_failed_deliveries"), Some(1.0));
    assert_eq!(state_gauge(&metrics, "wh_bad", "enabled"), Some(0.0));
    assert_eq!(state_gauge(&metrics, "wh_ok", "enabled"), Some(1.0));
    assert_eq!(state_gauge(&metrics, "wh_off", "disabled"), Some(1.0));
    server.terminate();
    assert!(server.wait_success());
    let logs = server.output();
    let warning = logs
        .lines()
        .find(|l| l.contains("gemhook webhooks update wh_bad --enable"))
        .unwrap_or_else(|| panic!("no warning naming the command: {logs}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
    assert!(!logs.contains(GEMINI_API_KEY), "the key leaked into the logs");
    assert!(
        service.requests().iter().all(|r| r.method == "GET"
            && r.path.starts_with("/v1beta/webhooks?page_size=")
            && r.api_key.as_deref() == Some(GEMINI_API_KEY)),
        "the watcher only reads"
    );
}

async fn gemini_side_a_failing_read_keeps_the_last_states_and_never_affects_readiness() {
    let db = TestDatabase::create().await;
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "enabled")]);
    let (server, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_GEMINI_BASE_URL", &service.url),
        ("GEMHOOK_WEBHOOK_WATCH_INTERVAL_SECS", "1"),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
    ]);
    readyz_until(&address, |body| {
        body["gemini_webhooks"]["webhooks"][0]["id"] == "wh_1"
    })
    .await;

    service.fail_with(Some(503));
    let (status, ready) = readyz_until(&address, |body| {
        body["gemini_webhooks"]["last_error"].is_string()
    })
    .await;

    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
    let error = ready["gemini_webhooks"]["last_error"].as_str().unwrap();
    assert!(error.contains("503") && error.contains("currently unavailable"), "{error}");
    assert_eq!(ready["gemini_webhooks"]["webhooks"][0]["state"], "enabled");

    // Disabled by the operator: the next read shows it.
    service.fail_with(None);
    service.set_state("wh_1", "disabled");
    readyz_until(&address, |body| {
        body["gemini_webhooks"]["webhooks"][0]["state"] == "disabled"
            && body["gemini_webhooks"]["last_error"].is_null()
    })
    .await;

    // Deleted: its gauges drop to 0 rather than keep reporting the last state.
    service.remove("wh_1");
    readyz_until(&address, |body| {
        body["gemini_webhooks"]["webhooks"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let (_, metrics) = get_text(&format!("{}/metrics", server.console_address())).await;
    assert_eq!(state_gauge(&metrics, "wh_1", "disabled"), Some(0.0), "{metrics}");
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_an_interval_of_zero_turns_the_watcher_off() {
    let db = crate::helpers::BACKEND
        .scope(Backend::Sqlite, TestDatabase::create())
        .await;
    let service = WebhookServiceStandIn::start().await;
    let (_server, address) = Gemhook::serve(&[
        ("GEMHOOK_DATABASE_URL", &db.url),
        ("GEMHOOK_WEBHOOK_SECRETS", SECRET),
        ("GEMINI_API_KEY", GEMINI_API_KEY),
        ("GEMHOOK_GEMINI_BASE_URL", &service.url),
        ("GEMHOOK_WEBHOOK_WATCH_INTERVAL_SECS", "0"),
        ("GEMHOOK_DYNAMIC_WEBHOOKS", "false"),
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get_text(&format!("{address}/readyz")).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["gemini_webhooks"], Value::Null);
    assert!(service.requests().is_empty());
}
