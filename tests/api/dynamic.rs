//! Dynamic webhooks: `v1a` (Ed25519) and RS256 JWTs verified against a JWKS, served here by a
//! local stand-in for Google's key endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use gemhook::verify::{WebhookSigningKey, sign_v1a};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use crate::helpers::*;

const RSA_KEY_A: &[u8] = include_bytes!("../data/jwt-test-key-a.pem");
const RSA_KEY_B: &[u8] = include_bytes!("../data/jwt-test-key-b.pem");
const TEST_JWKS: &str = include_str!("../data/jwt-test-keys.jwks.json");

/// Google's JWKS endpoint, played by a local server that counts its hits.
struct JwksServer {
    url: String,
    keys: Arc<RwLock<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct JwksState {
    keys: Arc<RwLock<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Serves the test RSA keys plus the public halves of `ed25519`.
    async fn start(ed25519: &[&WebhookSigningKey]) -> JwksServer {
        let document: Value = serde_json::from_str(TEST_JWKS).unwrap();
        let mut keys = document["keys"].as_array().unwrap().clone();
        keys.extend(ed25519.iter().map(|key| jwk(key)));
        let state = JwksState {
            keys: Arc::new(RwLock::new(keys)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let router = axum::Router::new()
            .route(
                "/jwks.json",
                axum::routing::get(|State(state): State<JwksState>| async move {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    axum::Json(json!({"keys": *state.keys.read().await}))
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        JwksServer {
            url,
            keys: state.keys,
            hits: state.hits,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn add_key(&self, key: &WebhookSigningKey) {
        self.keys.write().await.push(jwk(key));
    }

    /// Waits until the app has fetched the set `count` times.
    async fn wait_for_hits(&self, count: usize) {
        for _ in 0..200 {
            if self.hits() >= count {
                // Let the cache install what it fetched.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the JWKS was fetched {} times, not {count}", self.hits());
    }
}

fn jwk(key: &WebhookSigningKey) -> Value {
    let x = URL_SAFE_NO_PAD.encode(key.public_key().verifying_key().as_bytes());
    json!({"kty": "OKP", "crv": "Ed25519", "x": x})
}

fn new_key() -> WebhookSigningKey {
    WebhookSigningKey::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
}

async fn spawn_dynamic_app(jwks: &JwksServer, min_refresh_secs: u64) -> TestApp {
    let url = jwks.url.clone();
    spawn_app_on(Backend::Sqlite, move |f| {
        f.merge(("dynamic_webhooks", true))
            .merge(("jwks_url", url))
            .merge(("jwks_min_refresh_secs", min_refresh_secs))
    })
    .await
}

impl TestApp {
    async fn post_with_signature(
        &self,
        id: &str,
        timestamp: i64,
        signature: &str,
        body: &str,
    ) -> reqwest::Response {
        self.post_with_headers(
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &timestamp.to_string()),
                ("webhook-signature", signature),
            ],
            body.to_owned(),
        )
        .await
    }

    async fn post_v1a(&self, key: &WebhookSigningKey, id: &str, body: &str) -> reqwest::Response {
        let now = unix_now();
        let signature = sign_v1a(key, id, now, body.as_bytes());
        self.post_with_signature(id, now, &signature, body).await
    }

    async fn scheme_of(&self, id: &str) -> String {
        sqlx::query_scalar("SELECT scheme FROM events WHERE webhook_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_v1a_delivery_signed_by_the_second_of_two_jwks_keys_is_accepted_as_v1a() {
    let (first, second) = (new_key(), new_key());
    let jwks = JwksServer::start(&[&first, &second]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;
    let id = unique_id();

    let response = app.post_v1a(&second, &id, &batch_succeeded("dyn_1")).await;

    assert_eq!(
        status_and_json(response).await,
        (200, json!({"status": "accepted"}))
    );
    assert_eq!(app.scheme_of(&id).await, "v1a");
}

#[tokio::test]
async fn a_v1a_delivery_signed_by_a_key_outside_the_jwks_is_refused() {
    let jwks = JwksServer::start(&[&new_key()]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;

    let response = app
        .post_v1a(&new_key(), &unique_id(), &batch_succeeded("dyn_2"))
        .await;

    assert_eq!(
        status_and_json(response).await,
        (401, json!({"error": "invalid_signature"}))
    );
}

#[tokio::test]
async fn a_v1a_delivery_over_a_changed_body_is_refused() {
    let key = new_key();
    let jwks = JwksServer::start(&[&key]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;
    let id = unique_id();
    let now = unix_now();
    let signature = sign_v1a(&key, &id, now, batch_succeeded("dyn_3").as_bytes());

    let response = app
        .post_with_signature(&id, now, &signature, &batch_succeeded("dyn_4"))
        .await;

    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_bad_v1_entry_beside_a_good_v1a_entry_is_accepted() {
    let key = new_key();
    let jwks = JwksServer::start(&[&key]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;
    let id = unique_id();
    let body = batch_succeeded("dyn_5");
    let now = unix_now();
    let good = sign_v1a(&key, &id, now, body.as_bytes());
    let bad = format!("v1,{}", STANDARD.encode([7u8; 32]));

    let response = app
        .post_with_signature(&id, now, &format!("{bad} {good}"), &body)
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(app.scheme_of(&id).await, "v1a");
}

#[tokio::test]
async fn a_key_added_to_the_jwks_after_start_is_accepted_after_one_refetch() {
    let jwks = JwksServer::start(&[&new_key()]).await;
    let app = spawn_dynamic_app(&jwks, 1).await;
    jwks.wait_for_hits(1).await;
    let added = new_key();
    jwks.add_key(&added).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refetch interval

    let response = app
        .post_v1a(&added, &unique_id(), &batch_succeeded("dyn_6"))
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(jwks.hits(), 2, "the initial fetch and one refetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_forged_deliveries_cost_at_most_one_refetch_per_interval() {
    let jwks = JwksServer::start(&[&new_key()]).await;
    let app = spawn_dynamic_app(&jwks, 2).await;
    jwks.wait_for_hits(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // a refetch is allowed again
    let forger = new_key();

    let responses = futures::future::join_all((0..50).map(|i| {
        let body = batch_succeeded(&format!("forged_{i}"));
        let id = unique_id();
        let app = &app;
        let forger = &forger;
        async move { app.post_v1a(forger, &id, &body).await.status().as_u16() }
    }))
    .await;

    assert!(responses.iter().all(|&status| status == 401));
    assert!(jwks.hits() <= 2, "{} fetches for 50 forgeries", jwks.hits());
    assert_eq!(app.count("events").await, 0);
}

#[tokio::test]
async fn a_cached_key_still_verifies_after_the_jwks_server_is_gone() {
    let key = new_key();
    let jwks = JwksServer::start(&[&key]).await;
    let app = spawn_dynamic_app(&jwks, 1).await;
    jwks.wait_for_hits(1).await;
    jwks.task.abort();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // A miss first (forces a refetch attempt that fails), then the cached key.
    let forged = app
        .post_v1a(&new_key(), &unique_id(), &batch_succeeded("dyn_7"))
        .await;
    let genuine = app
        .post_v1a(&key, &unique_id(), &batch_succeeded("dyn_8"))
        .await;

    assert_eq!(forged.status(), 401);
    assert_eq!(genuine.status(), 200);
}

#[tokio::test]
async fn a_whpk_key_from_configuration_verifies_without_any_jwks() {
    let key = new_key();
    let public = key.public_key().to_string();
    let app = spawn_app_on(Backend::Sqlite, move |f| f.merge(("public_keys", public))).await;
    let id = unique_id();

    let response = app.post_v1a(&key, &id, &batch_succeeded("dyn_9")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(app.scheme_of(&id).await, "v1a");
}

fn rs256(claims: Value, kid: &str, pem: &[u8]) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
}

/// Posts a body with a JWT as the whole `webhook-signature`.
async fn post_jwt(app: &TestApp, token: &str) -> (u16, String) {
    let id = unique_id();
    let response = app
        .post_with_signature(&id, unix_now(), token, &batch_succeeded("jwt"))
        .await;
    (response.status().as_u16(), id)
}

#[tokio::test]
async fn rs256_jwts_are_accepted_only_when_valid_unexpired_and_signed_by_the_kids_key() {
    let jwks = JwksServer::start(&[]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;
    let now = unix_now();

    let (valid, valid_id) = post_jwt(
        &app,
        &rs256(json!({"exp": now + 600, "iat": now}), "test-a", RSA_KEY_A),
    )
    .await;
    let (expired, _) = post_jwt(
        &app,
        &rs256(json!({"exp": now - 3600}), "test-a", RSA_KEY_A),
    )
    .await;
    let (wrong_key, _) =
        post_jwt(&app, &rs256(json!({"exp": now + 600}), "test-a", RSA_KEY_B)).await;

    assert_eq!(valid, 200);
    assert_eq!(app.scheme_of(&valid_id).await, "jwt");
    assert_eq!(expired, 401);
    assert_eq!(wrong_key, 401);
}

#[tokio::test]
async fn jwts_with_alg_none_or_hs256_keyed_with_the_public_key_are_refused() {
    let jwks = JwksServer::start(&[]).await;
    let app = spawn_dynamic_app(&jwks, 30).await;
    let claims = URL_SAFE_NO_PAD.encode(json!({"exp": unix_now() + 600}).to_string());
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"test-a","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{claims}.");
    let with_junk_signature = format!("{none_header}.{claims}.AAAA");
    // The classic confusion: HMAC "keyed" with the RSA public key the verifier holds.
    let document: Value = serde_json::from_str(TEST_JWKS).unwrap();
    let public_key_bytes = document["keys"][0].to_string();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("test-a".into());
    let confused = jsonwebtoken::encode(
        &hs_header,
        &json!({"exp": unix_now() + 600}),
        &EncodingKey::from_secret(public_key_bytes.as_bytes()),
    )
    .unwrap();

    for token in [unsigned, with_junk_signature, confused] {
        assert_eq!(post_jwt(&app, &token).await.0, 401, "{token}");
    }
    assert_eq!(app.count("events").await, 0);
}

#[tokio::test]
async fn a_valid_jwt_is_refused_when_jwt_acceptance_is_turned_off() {
    let jwks = JwksServer::start(&[]).await;
    let url = jwks.url.clone();
    let app = spawn_app_on(Backend::Sqlite, move |f| {
        f.merge(("dynamic_webhooks", true))
            .merge(("jwks_url", url))
            .merge(("accept_jwt", false))
    })
    .await;
    let now = unix_now();

    let (status, _) = post_jwt(&app, &rs256(json!({"exp": now + 600}), "test-a", RSA_KEY_A)).await;

    assert_eq!(status, 401);
}
