//! The console's API and pages over HTTP, on both backends: authentication (bearer, login
//! cookie, loopback without a token), CSRF refusals, every API endpoint, escaping, and
//! `/metrics` off the public address.

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::standin::GeminiStandIn;

const TOKEN: &str = "console-test-token-0123456789";

async fn console_app(token: Option<&str>) -> (TestApp, GeminiStandIn) {
    let gemini = GeminiStandIn::start().await;
    let url = gemini.url.clone();
    let token = token.map(str::to_owned);
    let app = spawn_app_with(move |f| {
        let f = f.merge(("gemini_base_url", url));
        match token {
            Some(token) => f.merge(("admin_token", token)),
            None => f,
        }
    })
    .await;
    (app, gemini)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

fn event(event_type: &str, data: Value) -> String {
    json!({"type": event_type, "version": "v1", "timestamp": "2026-11-23T12:00:00Z", "data": data})
        .to_string()
}

/// A job that dead-letters at once: its pointer leads to a host the key may not go to.
fn foreign_video(n: u32) -> String {
    event(
        "video.generated",
        json!({"id": format!("video_{n}"), "output_file_uri": "https://elsewhere.example/v.mp4"}),
    )
}

async fn deliver(app: &TestApp, id: &str, body: &str) {
    assert_eq!(app.post_signed(id, body).await.status(), 200);
}

struct Admin<'a> {
    app: &'a TestApp,
    base: String,
}

impl<'a> Admin<'a> {
    fn new(app: &'a TestApp) -> Self {
        Admin {
            app,
            base: app.admin_address.clone().expect("the console listens"),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .app
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .app
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

crate::on_both_backends! {
async fn console_the_api_answers_401_without_the_token_and_works_with_it() {
    let (app, _gemini) = console_app(Some(TOKEN)).await;
    let base = app.admin_address.clone().unwrap();

    let none = app.client.get(format!("{base}/api/v1/events")).send().await.unwrap();
    let wrong = app
        .client
        .get(format!("{base}/api/v1/stats"))
        .bearer_auth("console-test-token-012345678")
        .send()
        .await
        .unwrap();
    let right = Admin::new(&app).get("/api/v1/events").await;
    let metrics = app.client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics_ok = app
        .client
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let public_metrics = app.client.get(format!("{}/metrics", app.address)).send().await.unwrap();
    let openapi = app.client.get(format!("{base}/api/v1/openapi.json")).send().await.unwrap();

    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(none.json::<Value>().await.unwrap()["error"], "unauthenticated");
    assert_eq!(wrong.status(), 401);
    assert_eq!(right.0, 200);
    assert_eq!(right.1, json!({"items": [], "next_cursor": null}));
    assert_eq!(metrics.status(), 401, "/metrics is under the console's rule");
    assert_eq!(metrics_ok.status(), 200);
    assert!(metrics_ok.text().await.unwrap().contains("gemhook_"));
    assert_eq!(public_metrics.status(), 404, "/metrics is not on the public address");
    assert_eq!(openapi.status(), 200, "the API's description is public");
    let doc: Value = openapi.json().await.unwrap();
    assert!(doc["paths"]["/api/v1/events/{webhook_id}/replay"]["post"].is_object());
}

async fn console_events_are_listed_filtered_paged_and_shown_whole() {
    let (app, _gemini) = console_app(Some(TOKEN)).await;
    let admin = Admin::new(&app);
    let prefix = unique_id();
    for n in 0..5 {
        let body = event("batch.failed", json!({"id": format!("batches/p{n}")}));
        deliver(&app, &format!("{prefix}_{n}"), &body).await;
    }
    deliver(&app, &unique_id(), &foreign_video(1)).await;

    let (_, first) = admin.get(&format!("/api/v1/events?id_prefix={prefix}&limit=3")).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = admin
        .get(&format!("/api/v1/events?id_prefix={prefix}&limit=3&cursor={cursor}"))
        .await;
    let (_, videos) = admin.get("/api/v1/events?type=video.generated").await;
    let (_, by_resource) = admin.get("/api/v1/events?resource_id=batches/p2").await;
    let (bad, problem) = admin.get("/api/v1/events?since=yesterday").await;
    let (_, one) = admin.get(&format!("/api/v1/events/{prefix}_1")).await;
    let (missing, _) = admin.get("/api/v1/events/no-such-id").await;

    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|e| e["webhook_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&first), [4, 3, 2].map(|n| format!("{prefix}_{n}")));
    assert_eq!(ids(&second), [1, 0].map(|n| format!("{prefix}_{n}")));
    assert!(second["next_cursor"].is_null());
    assert_eq!(videos["items"].as_array().unwrap().len(), 1);
    assert_eq!(ids(&by_resource), [format!("{prefix}_2")]);
    assert_eq!((bad, problem["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert_eq!(one["event"]["webhook_id"], format!("{prefix}_1"));
    assert_eq!(one["event"]["scheme"], "v1");
    assert!(one["event"]["body"].as_str().unwrap().contains("batches/p1"));
    assert_eq!(one["event"]["headers"]["webhook-id"], format!("{prefix}_1"));
    assert_eq!(one["job"]["state"], "available");
    assert_eq!(missing, StatusCode::NOT_FOUND);
}

async fn console_replay_retry_cancel_and_bulk_retry_go_through_the_queue() {
    let (app, _gemini) = console_app(Some(TOKEN)).await;
    let admin = Admin::new(&app);
    let (dead_a, dead_b, waiting, done) = (unique_id(), unique_id(), unique_id(), unique_id());
    deliver(&app, &dead_a, &foreign_video(1)).await;
    deliver(&app, &dead_b, &foreign_video(2)).await;
    deliver(&app, &done, &event("batch.failed", json!({"id": "batches/x"}))).await;
    app.run_worker_until_idle().await;
    deliver(&app, &waiting, &event("batch.failed", json!({"id": "batches/y"}))).await;

    let (_, stats) = admin.get("/api/v1/stats").await;
    let (_, dead) = admin.get("/api/v1/jobs?state=discarded").await;
    let reason = dead["items"][0]["last_error"].as_str().unwrap().to_owned();
    let (_, by_error) = admin
        .get(&format!("/api/v1/jobs?last_error={}", url_escape(&reason)))
        .await;
    let (_, dry) = admin
        .post("/api/v1/jobs/retry-dead-letters", json!({"last_error": reason, "dry_run": true}))
        .await;
    let after_dry = app.job_of(&dead_a).await.0;
    let (_, bulk) = admin
        .post("/api/v1/jobs/retry-dead-letters", json!({"last_error": reason}))
        .await;
    let waiting_job = app_job_id(&admin, &waiting).await;
    let (cancelled, _) = admin.post(&format!("/api/v1/jobs/{waiting_job}/cancel"), json!({})).await;
    let (again, not_waiting) = admin.post(&format!("/api/v1/jobs/{waiting_job}/cancel"), json!({})).await;
    let (replayed, _) = admin.post(&format!("/api/v1/events/{done}/replay"), json!({})).await;
    let (missing, _) = admin.post("/api/v1/events/nope/replay", json!({})).await;
    let (retried, _) = admin.post(&format!("/api/v1/jobs/{waiting_job}/retry"), json!({})).await;

    assert_eq!(stats["jobs"]["discarded"], 2);
    assert_eq!(stats["jobs"]["completed"], 1);
    assert_eq!(stats["discard_reasons"][0]["count"], 2);
    assert!(stats["received_last_hour"].as_i64().unwrap() >= 4);
    assert_eq!(by_error["items"].as_array().unwrap().len(), 2);
    assert_eq!(dry, json!({"matched": 2, "requeued": 0, "dry_run": true}));
    assert_eq!(after_dry, "discarded", "a dry run changes nothing");
    assert_eq!(bulk, json!({"matched": 2, "requeued": 2, "dry_run": false}));
    assert_eq!(app.job_of(&dead_a).await.0, "available");
    assert_eq!(app.job_of(&dead_b).await.0, "available");
    assert_eq!(cancelled, StatusCode::OK);
    assert_eq!((again, not_waiting["error"].as_str()), (StatusCode::CONFLICT, Some("not_waiting")));
    assert_eq!(replayed, StatusCode::OK);
    assert_eq!(app.job_of(&done).await.0, "available");
    assert_eq!(missing, StatusCode::NOT_FOUND);
    assert_eq!(retried, StatusCode::OK, "a cancelled job can be re-queued");
    assert_eq!(app.job_of(&waiting).await.0, "available");
    app.run_worker_until_idle().await;
    assert_eq!(app.job_of(&done).await.0, "completed", "the replay ran");
    let (_, deliveries) = admin.get("/api/v1/deliveries?state=discarded").await;
    assert_eq!(deliveries, json!({"items": [], "next_cursor": null}));
    let (_, none) = admin
        .post("/api/v1/deliveries/retry-dead-letters", json!({"dry_run": true}))
        .await;
    assert_eq!(none["matched"], 0);
}

async fn console_pages_need_a_login_and_every_form_a_csrf_token() {
    let (app, _gemini) = console_app(Some(TOKEN)).await;
    let base = app.admin_address.clone().unwrap();
    let client = no_redirects();
    let id = unique_id();
    deliver(&app, &id, &event("batch.failed", json!({"id": "batches/z"}))).await;

    let anonymous = client.get(format!("{base}/")).send().await.unwrap();
    let wrong = client
        .post(format!("{base}/login"))
        .form(&[("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    let login = client
        .post(format!("{base}/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = client
        .get(format!("{base}/events/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let replay = |form: Vec<(&'static str, String)>, origin: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/events/{id}/replay"))
            .header("cookie", &cookie)
            .form(&form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let without = replay(vec![], None).await.unwrap();
    let forged = replay(vec![("csrf", "forged".into())], None).await.unwrap();
    let cross_site = replay(vec![("csrf", csrf.clone())], Some("https://evil.example")).await.unwrap();
    let api_with_cookie = client
        .post(format!("{base}/api/v1/events/{id}/replay"))
        .header("cookie", &cookie)
        .form(&[("a", "b")])
        .send()
        .await
        .unwrap();
    let state_before = app.job_of(&id).await.0;
    let with = replay(vec![("csrf", csrf.clone())], None).await.unwrap();

    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/login");
    assert_eq!(wrong.status(), 303);
    assert!(wrong.headers()["location"].to_str().unwrap().starts_with("/login?notice="));
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(TOKEN), "the cookie is not the token");
    for refused in [&without, &forged, &cross_site, &api_with_cookie] {
        assert_eq!(refused.status(), 403);
    }
    assert_eq!(state_before, "available", "refused requests changed nothing");
    assert_eq!(with.status(), 303, "{}", with.text().await.unwrap_or_default());
}

async fn console_a_body_with_markup_is_shown_as_text() {
    let (app, _gemini) = console_app(None).await;
    let base = app.admin_address.clone().unwrap();
    let id = format!("{}<img src=x onerror=alert(2)>", unique_id());
    let body = r#"{"type":"batch.failed","data":{"id":"<script>alert(1)</script>"}}"#;
    deliver(&app, &id, body).await;

    let list = app.client.get(format!("{base}/events")).send().await.unwrap().text().await.unwrap();
    let escaped_id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let page = app
        .client
        .get(format!("{base}/events/{}", escaped_id.replace('+', "%20")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();

    for html in [&html, &list] {
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(list.contains("&lt;img src=x onerror=alert(2)&gt;"));
}

async fn console_hand_offs_and_jobs_are_shown_and_retried_one_by_one() {
    let gemini = GeminiStandIn::start().await;
    let application = crate::handoff::Application::default();
    let url = application.start().await;
    application.set_down(true);
    let app = crate::handoff::app_with_sinks(&gemini, crate::handoff::http_sink("app", &url, "")).await;
    let base = app.admin_address.clone().unwrap();
    let id = unique_id();
    deliver(&app, &id, &event("batch.failed", json!({"id": "batches/h"}))).await;
    crate::handoff::process(&app).await;
    let get = |path: String| {
        let client = app.client.clone();
        let base = base.clone();
        async move {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let post = |path: String| {
        let client = app.client.clone();
        let base = base.clone();
        async move {
            let response = client.post(format!("{base}{path}")).json(&json!({})).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };

    let (_, listed) = get(format!("/api/v1/deliveries?webhook_id={id}")).await;
    let delivery = listed["items"][0]["id"].as_i64().unwrap();
    let (_, one) = get(format!("/api/v1/deliveries/{delivery}")).await;
    let (_, by_sink) = get("/api/v1/deliveries?sink=app&state=retryable".into()).await;
    let (_, detail) = get(format!("/api/v1/events/{id}")).await;
    let job = detail["job"]["id"].as_i64().unwrap();
    let (_, job_detail) = get(format!("/api/v1/jobs/{job}")).await;
    let (missing_job, _) = get("/api/v1/jobs/999999".into()).await;
    let (missing_delivery, _) = get("/api/v1/deliveries/999999".into()).await;
    application.set_down(false);
    let (retried, _) = post(format!("/api/v1/deliveries/{delivery}/retry")).await;
    let (not_retried, problem) = post("/api/v1/deliveries/999999/retry".into()).await;
    app.dispatcher().run_until_idle().await;
    let (_, after) = get(format!("/api/v1/deliveries/{delivery}")).await;

    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["state"], "retryable");
    assert_eq!(one["sink"], "app");
    assert_eq!(one["errors"].as_array().unwrap().len(), 1, "the failed attempt is kept");
    assert_eq!(by_sink["items"][0]["id"], delivery);
    assert_eq!(detail["outcome"]["revision"], 1);
    assert_eq!(detail["deliveries"][0]["id"], delivery);
    assert_eq!(job_detail["state"], "completed");
    assert_eq!(job_detail["webhook_id"], id.as_str());
    assert_eq!((missing_job, missing_delivery), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(retried, StatusCode::OK);
    assert_eq!((not_retried, problem["error"].as_str()), (StatusCode::CONFLICT, Some("not_requeued")));
    assert_eq!(after["state"], "completed");
    assert_eq!(application.received().len(), 1);
}

async fn console_without_a_token_answers_only_loopback_hosts() {
    let (app, _gemini) = console_app(None).await;
    let base = app.admin_address.clone().unwrap();

    let local = app.client.get(format!("{base}/api/v1/stats")).send().await.unwrap();
    let rebound = app
        .client
        .get(format!("{base}/api/v1/stats"))
        .header("host", "evil.example:8081")
        .send()
        .await
        .unwrap();
    let form_post = app
        .client
        .post(format!("{base}/api/v1/jobs/retry-dead-letters"))
        .form(&[("dry_run", "true")])
        .send()
        .await
        .unwrap();
    let json_post = app
        .client
        .post(format!("{base}/api/v1/jobs/retry-dead-letters"))
        .json(&json!({"dry_run": true}))
        .send()
        .await
        .unwrap();

    assert_eq!(local.status(), 200);
    assert_eq!(rebound.status(), 403);
    assert_eq!(rebound.json::<Value>().await.unwrap()["error"], "not_loopback_host");
    assert_eq!(form_post.status(), 403, "a form is what a cross-site page can send");
    assert_eq!(json_post.status(), 200);
}
}

#[test]
fn console_a_public_admin_address_without_a_token_is_refused_at_start() {
    let open = gemhook::config::Settings::defaults()
        .merge(("webhook_secrets", SECRET))
        .merge(("admin_listen", "0.0.0.0:8081"));
    let error = gemhook::config::Settings::from_figment(open)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("admin_listen") && error.contains("GEMHOOK_ADMIN_TOKEN"),
        "{error}"
    );
    let metrics = gemhook::config::Settings::defaults()
        .merge(("webhook_secrets", SECRET))
        .merge(("metrics_listen", "0.0.0.0:9090"));
    assert!(gemhook::config::Settings::from_figment(metrics).is_err());
    let with_token = gemhook::config::Settings::defaults()
        .merge(("webhook_secrets", SECRET))
        .merge(("admin_listen", "0.0.0.0:8081"))
        .merge(("admin_token", TOKEN));
    assert!(gemhook::config::Settings::from_figment(with_token).is_ok());
    let off = gemhook::config::Settings::defaults()
        .merge(("webhook_secrets", SECRET))
        .merge(("admin_listen", ""));
    let off = gemhook::config::Settings::from_figment(off).unwrap();
    assert_eq!(off.admin_listen().unwrap().addr(), None);
}

fn url_escape(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn app_job_id(admin: &Admin<'_>, webhook_id: &str) -> i64 {
    let (_, detail) = admin.get(&format!("/api/v1/events/{webhook_id}")).await;
    detail["job"]["id"].as_i64().unwrap()
}
