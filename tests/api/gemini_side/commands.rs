//! `gemhook webhooks ...`, the real binary, against the WebhookService stand-in.

use serde_json::json;

use super::*;

fn env(service: &WebhookServiceStandIn) -> Vec<(&'static str, String)> {
    vec![
        ("GEMINI_API_KEY", GEMINI_API_KEY.to_owned()),
        ("GEMHOOK_GEMINI_BASE_URL", service.url.clone()),
    ]
}

async fn run(service: &WebhookServiceStandIn, extra: &[(&str, &str)], args: &[&str]) -> Run {
    let mut all = env(service);
    all.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = gemhook(&pairs, args).await;
    run.assert_no_key();
    run
}

/// Every request carried the key; returns them.
fn requests_with_key(service: &WebhookServiceStandIn) -> Vec<Seen> {
    let requests = service.requests();
    for request in &requests {
        assert_eq!(
            request.api_key.as_deref(),
            Some(GEMINI_API_KEY),
            "{request:?}"
        );
    }
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_create_registers_the_webhook_and_prints_its_secret_once_with_the_next_step() {
    let service = WebhookServiceStandIn::start().await;

    let run = run(
        &service,
        &[],
        &[
            "webhooks",
            "create",
            "--uri",
            "https://hooks.example.com/webhooks/gemini",
            "--events",
            "batch.succeeded,video.generated",
            "--name",
            "production",
        ],
    )
    .await;

    assert!(run.success, "{run:?}");
    let requests = requests_with_key(&service);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1beta/webhooks");
    assert_eq!(
        requests[0].body,
        json!({"uri": "https://hooks.example.com/webhooks/gemini",
               "subscribed_events": ["batch.succeeded", "video.generated"],
               "name": "production"})
    );
    assert!(
        run.stdout.contains("created webhook wh_new1"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches(CREATED_SECRET).count(),
        2,
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("GEMHOOK_WEBHOOK_SECRETS={CREATED_SECRET}\n")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("gemhook webhooks ping wh_new1 --wait 60"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_create_with_secrets_configured_keeps_them_after_the_new_one() {
    let service = WebhookServiceStandIn::start().await;
    let run = run(
        &service,
        &[("GEMHOOK_WEBHOOK_SECRETS", SECRET)],
        &[
            "webhooks",
            "create",
            "--uri",
            "https://h/x",
            "--events",
            "batch.failed",
        ],
    )
    .await;
    assert!(run.success, "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "GEMHOOK_WEBHOOK_SECRETS={CREATED_SECRET},<the secret configured now>"
        )),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(SECRET),
        "the configured secret is not printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_create_json_prints_the_resource_as_google_sent_it() {
    let service = WebhookServiceStandIn::start().await;
    let run = run(
        &service,
        &[],
        &[
            "webhooks",
            "create",
            "--uri",
            "https://h/x",
            "--events",
            "batch.succeeded",
            "--json",
        ],
    )
    .await;
    assert!(run.success, "{run:?}");
    let created = run.json();
    assert_eq!(created["id"], "wh_new1");
    assert_eq!(created["new_signing_secret"], CREATED_SECRET);
    assert_eq!(created["subscribed_events"], json!(["batch.succeeded"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_list_follows_every_page() {
    let service = WebhookServiceStandIn::start().await.with_webhooks([
        webhook("wh_1", "enabled"),
        camel_case_webhook("wh_2", "DISABLED"),
        webhook("wh_3", "disabled_due_to_failed_deliveries"),
        webhook("wh_4", "enabled"),
        webhook("wh_5", "enabled"),
    ]);

    let json_run = run(&service, &[], &["webhooks", "list", "--json"]).await;
    let table = run(&service, &[], &["webhooks", "list"]).await;

    assert!(json_run.success, "{json_run:?}");
    let listed = json_run.json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wh_1", "wh_2", "wh_3", "wh_4", "wh_5"]);
    let paths: Vec<String> = requests_with_key(&service)
        .into_iter()
        .take(3)
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1beta/webhooks?page_size=1000",
            "/v1beta/webhooks?page_size=1000&page_token=page%2F1%2B%3D",
            "/v1beta/webhooks?page_size=1000&page_token=page%2F2%2B%3D",
        ]
    );
    assert!(table.success, "{table:?}");
    assert!(table.stdout.contains("wh_2"), "{}", table.stdout);
    // camelCase fields and an upper-case state read like the others.
    let line = table
        .stdout
        .lines()
        .find(|l| l.starts_with("wh_2"))
        .unwrap();
    assert!(
        line.contains("disabled") && line.contains("interaction.completed"),
        "{line}"
    );
    assert!(
        table
            .stdout
            .contains("gemhook webhooks update wh_3 --enable"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_get_shows_the_webhook_and_json_is_the_resource() {
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([camel_case_webhook("wh_c", "enabled")]);

    let shown = run(&service, &[], &["webhooks", "get", "wh_c"]).await;
    let json_run = run(&service, &[], &["webhooks", "get", "wh_c", "--json"]).await;

    assert!(shown.success, "{shown:?}");
    assert!(
        shown.stdout.contains("state     enabled"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("events    interaction.completed"),
        "{}",
        shown.stdout
    );
    assert!(
        shown
            .stdout
            .contains("whsec_xyz… (expires 2026-12-03T10:00:00Z)"),
        "{}",
        shown.stdout
    );
    assert_eq!(json_run.json(), camel_case_webhook("wh_c", "enabled"));
    let requests = requests_with_key(&service);
    assert!(
        requests
            .iter()
            .all(|r| r.method == "GET" && r.path == "/v1beta/webhooks/wh_c")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_a_failure_exits_non_zero_with_googles_status_and_message() {
    let service = WebhookServiceStandIn::start().await;

    let run = run(&service, &[], &["webhooks", "get", "wh_missing", "--json"]).await;

    assert!(!run.success);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("Gemini answered 404 NOT_FOUND: Webhook wh_missing not found."),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_a_rejected_key_is_reported_and_never_printed() {
    let service = WebhookServiceStandIn::start().await;
    let wrong = "AIza-wrong-key-never-printed";
    let pairs = [
        ("GEMINI_API_KEY", wrong),
        ("GEMHOOK_GEMINI_BASE_URL", service.url.as_str()),
    ];

    let run = gemhook(&pairs, &["webhooks", "list"]).await;

    assert!(!run.success);
    assert!(
        run.stderr
            .contains("400 INVALID_ARGUMENT: API key not valid"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_without_an_api_key_nothing_is_sent() {
    let service = WebhookServiceStandIn::start().await;
    let run = gemhook(
        &[("GEMHOOK_GEMINI_BASE_URL", service.url.as_str())],
        &["webhooks", "list"],
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("GEMINI_API_KEY is not set"),
        "{}",
        run.stderr
    );
    assert!(service.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_a_redirect_is_not_followed_so_the_key_never_leaves_the_api() {
    let service = WebhookServiceStandIn::start().await;
    let foreign = WebhookServiceStandIn::start().await;
    service.redirect_moved_to(&format!("{}/v1beta/webhooks/wh_1", foreign.url));

    let run = run(&service, &[], &["webhooks", "get", "moved"]).await;

    assert!(!run.success);
    assert!(
        run.stderr
            .contains("Gemini answered 302: a redirect, not followed"),
        "{}",
        run.stderr
    );
    assert!(
        foreign.requests().is_empty(),
        "the foreign host saw a request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_update_sends_only_what_is_given_with_the_matching_update_mask() {
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "disabled_due_to_failed_deliveries")]);

    let enable = run(
        &service,
        &[],
        &[
            "webhooks",
            "update",
            "wh_1",
            "--uri",
            "https://h/new",
            "--enable",
            "--json",
        ],
    )
    .await;
    let events = run(
        &service,
        &[],
        &[
            "webhooks",
            "update",
            "wh_1",
            "--events",
            "batch.failed,batch.expired",
        ],
    )
    .await;
    let disable = run(&service, &[], &["webhooks", "update", "wh_1", "--disable"]).await;
    let nothing = run(&service, &[], &["webhooks", "update", "wh_1"]).await;

    for ok in [&enable, &events, &disable] {
        assert!(ok.success, "{ok:?}");
    }
    assert_eq!(enable.json()["state"], "enabled");
    assert_eq!(enable.json()["uri"], "https://h/new");
    assert!(
        events
            .stdout
            .contains("updated webhook wh_1: subscribed_events"),
        "{}",
        events.stdout
    );
    assert!(!nothing.success);
    assert!(
        nothing.stderr.contains("nothing to update"),
        "{}",
        nothing.stderr
    );
    let sent: Vec<(String, String, Value)> = requests_with_key(&service)
        .into_iter()
        .map(|r| (r.method, r.path, r.body))
        .collect();
    assert_eq!(
        sent,
        [
            (
                "PATCH".to_owned(),
                "/v1beta/webhooks/wh_1?update_mask=uri,state".to_owned(),
                json!({"uri": "https://h/new", "state": "enabled"})
            ),
            (
                "PATCH".to_owned(),
                "/v1beta/webhooks/wh_1?update_mask=subscribed_events".to_owned(),
                json!({"subscribed_events": ["batch.failed", "batch.expired"]})
            ),
            (
                "PATCH".to_owned(),
                "/v1beta/webhooks/wh_1?update_mask=state".to_owned(),
                json!({"state": "disabled"})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_delete_removes_the_webhook() {
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "enabled")]);

    let deleted = run(&service, &[], &["webhooks", "delete", "wh_1"]).await;
    let again = run(&service, &[], &["webhooks", "delete", "wh_1", "--json"]).await;

    assert!(deleted.success, "{deleted:?}");
    assert!(deleted.stdout.contains("deleted webhook wh_1"));
    assert!(!again.success);
    assert!(again.stderr.contains("404 NOT_FOUND"), "{}", again.stderr);
    let requests = requests_with_key(&service);
    assert_eq!(requests[0].method, "DELETE");
    assert_eq!(requests[0].path, "/v1beta/webhooks/wh_1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_side_rotate_secret_prints_the_new_secret_and_the_zero_downtime_steps() {
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "enabled")]);

    let rotated = run(
        &service,
        &[("GEMHOOK_WEBHOOK_SECRETS", SECRET)],
        &["webhooks", "rotate-secret", "wh_1"],
    )
    .await;
    let revoked = run(
        &service,
        &[],
        &[
            "webhooks",
            "rotate-secret",
            "wh_1",
            "--revoke-now",
            "--json",
        ],
    )
    .await;

    assert!(rotated.success, "{rotated:?}");
    let out = &rotated.stdout;
    let first = out
        .find(&format!(
            "GEMHOOK_WEBHOOK_SECRETS={ROTATED_SECRET},<the secret configured now>"
        ))
        .unwrap_or_else(|| panic!("new secret first, old kept: {out}"));
    let last = out
        .find(&format!("GEMHOOK_WEBHOOK_SECRETS={ROTATED_SECRET}\n"))
        .unwrap_or_else(|| panic!("then the old one removed: {out}"));
    assert!(first < last, "{out}");
    assert!(out.contains("24 hours"), "{out}");
    assert!(!out.contains(SECRET));
    assert_eq!(revoked.json(), json!({"secret": ROTATED_SECRET}));
    let bodies: Vec<(String, Value)> = requests_with_key(&service)
        .into_iter()
        .map(|r| (r.path, r.body))
        .collect();
    assert_eq!(
        bodies,
        [
            (
                "/v1beta/webhooks/wh_1:rotateSigningSecret".to_owned(),
                json!({"revocation_behavior": "revoke_previous_secrets_after_h24"})
            ),
            (
                "/v1beta/webhooks/wh_1:rotateSigningSecret".to_owned(),
                json!({"revocation_behavior": "revoke_previous_secrets_immediately"})
            ),
        ]
    );
}

crate::on_both_backends! {
async fn gemini_side_ping_wait_sees_the_delivery_arrive_and_verify() {
    let app = spawn_app().await;
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "enabled")]);
    service.deliver_pings_to(&app.webhook_url(), SECRET);

    let run = run(
        &service,
        &[("GEMHOOK_DATABASE_URL", &app.db.url)],
        &["webhooks", "ping", "wh_1", "--wait", "20", "--json"],
    )
    .await;

    assert!(run.success, "{run:?}");
    let report = run.json();
    assert_eq!(report["arrived"], true);
    assert_eq!(report["delivery"]["type"], "webhook.ping");
    assert_eq!(report["delivery"]["scheme"], "v1");
    assert!(report["after_secs"].as_f64().unwrap() < 20.0);
    let requests = requests_with_key(&service);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1beta/webhooks/wh_1:ping");
    assert_eq!(requests[0].body, Value::Null, "an empty body");
}

async fn gemini_side_ping_wait_fails_when_no_verified_delivery_arrives() {
    let app = spawn_app().await;
    let service = WebhookServiceStandIn::start()
        .await
        .with_webhooks([webhook("wh_1", "enabled")]);
    // Signed with a secret the app does not have: refused, never stored.
    service.deliver_pings_to(&app.webhook_url(), OTHER_SECRET);

    let run = run(
        &service,
        &[("GEMHOOK_DATABASE_URL", &app.db.url)],
        &["webhooks", "ping", "wh_1", "--wait", "2"],
    )
    .await;

    assert!(!run.success);
    assert!(
        run.stderr.contains("no verified delivery arrived within 2 s"),
        "{}",
        run.stderr
    );
    assert_eq!(app.count("events").await, 0);
}
}
