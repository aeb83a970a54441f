//! The JWKS cache: Google's published keys for dynamic webhooks, fetched and kept fresh.
//!
//! The verifier (`crate::verify`) is pure and takes a [`PublishedKeys`]; this module does the
//! I/O around it:
//!
//! - a background task fetches the set at start-up (start-up never waits for Google) and again
//!   when it expires (`Cache-Control: max-age`, else the configured TTL);
//! - when no cached key verifies a delivery, [`verify_refetching`] (the one verification policy,
//!   used by the receiver and by `gemhook verify`) asks [`JwksCache::refresh_after_miss`] to
//!   refetch, at most
//!   once per `min_refresh` and with concurrent callers sharing one fetch, so a flood of forged
//!   deliveries costs Google one request;
//! - a failed or malformed fetch keeps the last good set: losing Google for a while must not turn
//!   into refusing every dynamic delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use reqwest::header::{ACCEPT, CACHE_CONTROL, HeaderMap};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::telemetry::error_chain;
use crate::verify::{
    self, CheckedHeaders, JwksDocumentError, Keys, Policy, PublishedKeys, Rejection, Verified,
    parse_jwks,
};

/// The verification policy, written once for the receiver and `gemhook verify`: verify against
/// the configured keys and the cached JWKS; when nothing verifies and Google's keys could have
/// (a `v1a` entry, or a JWT we accept), refetch once (the cache rate-limits and shares
/// refetches) and try again, since Google may have added a key since our last fetch.
///
/// Returns the verdict and the published set it was last judged against, which `gemhook
/// verify` explains.
pub async fn verify_refetching(
    jwks: Option<&JwksCache>,
    checked: &CheckedHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    policy: &Policy,
    now: i64,
) -> (Result<Verified, Rejection>, Option<Arc<PublishedKeys>>) {
    let published = jwks.and_then(JwksCache::current);
    let first = verify::verify_checked(checked, body, keys, published.as_deref(), policy, now);
    let Some(jwks) = jwks else {
        return (first, published);
    };
    let refetch_could_help = verify::wants_published_keys(checked.signature, policy);
    if first != Err(Rejection::InvalidSignature)
        || !refetch_could_help
        || !jwks.refresh_after_miss().await
    {
        return (first, published);
    }
    let published = jwks.current();
    let second = verify::verify_checked(checked, body, keys, published.as_deref(), policy, now);
    (second, published)
}

/// A JWKS is a few kilobytes; anything near this is not one, and we do not buffer it.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A refresh after a miss runs while a delivery waits for it, so it must fail well before the
/// sender's own timeout ("a few seconds").
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound on a served `max-age`: a key Google withdraws stays trusted at most this long. The
/// operator's own TTL is not capped.
const MAX_SERVED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Never schedule refreshes closer than this, whatever `max-age: 0` or a tiny setting says.
const MIN_SCHEDULE: Duration = Duration::from_secs(1);

/// Why one fetch did not install a key set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the request failed")]
    Request(#[source] reqwest::Error),
    #[error("the server answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the document is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the document was refused")]
    Document(#[source] JwksDocumentError),
    #[error("the document holds no usable key ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
}

/// What the cache looks like, for logs and (later) metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// Seconds since the current set was installed; `None` before the first good fetch.
    pub age_secs: Option<u64>,
    /// Cause chain of the latest attempt if it failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// Requests made to the JWKS URL so far.
    pub fetches: u64,
    /// Keys in the current set.
    pub ed25519_keys: usize,
    pub rsa_keys: usize,
}

/// Google's JWKS, cached. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

struct Inner {
    url: reqwest::Url,
    client: reqwest::Client,
    ttl: Duration,
    min_refresh: Duration,
    /// Read on every dynamic delivery and written once an hour: a read lock held only long
    /// enough to clone an `Arc`, never across a verification.
    current: RwLock<Option<Arc<PublishedKeys>>>,
    /// Bumped at each install, so that callers who waited for a fetch learn it installed a set.
    generation: AtomicU64,
    fetches: AtomicU64,
    /// The single-flight gate: whoever holds it may fetch. It guards the time of the last
    /// attempt, which is what the `min_refresh` rate limit is measured from.
    fetch_gate: tokio::sync::Mutex<Option<Instant>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    installed_at: Option<Instant>,
    last_error: Option<String>,
    /// When the background task should fetch next.
    next_refresh_at: Option<Instant>,
    consecutive_failures: u32,
}

impl JwksCache {
    /// A cache of the JWKS at `url`, with nothing fetched yet. `ttl` applies when the server
    /// sends no `max-age`; `min_refresh` is the least time between two fetches after misses.
    pub fn new(
        url: reqwest::Url,
        client: reqwest::Client,
        ttl: Duration,
        min_refresh: Duration,
    ) -> Self {
        JwksCache {
            inner: Arc::new(Inner {
                url,
                client,
                ttl,
                min_refresh,
                current: RwLock::new(None),
                generation: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
                fetch_gate: tokio::sync::Mutex::new(None),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The current key set, `None` until a fetch has succeeded.
    pub fn current(&self) -> Option<Arc<PublishedKeys>> {
        // A poisoned lock still holds a whole `Option<Arc<_>>` (writers only swap it), so its
        // value is as good as ever.
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts the background task: a fetch now, then one whenever the set expires, and retries
    /// with backoff while fetches fail. Returns at once; start-up never waits on Google. The task
    /// ends by itself once every clone of the cache is dropped (or when aborted). Must be called
    /// inside a Tokio runtime.
    pub fn spawn_initial_fetch(&self) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(refresh_loop(weak))
    }

    /// Called when no cached key verified a delivery that wanted published keys. Fetches again
    /// unless a fetch was attempted less than `min_refresh` ago; callers arriving while a fetch
    /// runs wait for it and share its outcome. True when a new set was installed since the call
    /// began: verifying once more is then worth it.
    ///
    /// A set installed just *before* the call is not reported (the caller cannot tell us which set
    /// it used); such a delivery is refused once and verifies on the sender's retry.
    pub async fn refresh_after_miss(&self) -> bool {
        let inner = &self.inner;
        let seen = inner.generation.load(Ordering::Acquire);
        let mut last_attempt = inner.fetch_gate.lock().await;
        if inner.generation.load(Ordering::Acquire) != seen {
            return true; // the fetch we queued behind installed a set
        }
        if last_attempt.is_some_and(|at| at.elapsed() < inner.min_refresh) {
            return false; // rate-limited: a forged flood must not become a flood to Google
        }
        inner.attempt(&mut last_attempt).await
    }

    /// Age, last error and fetch count, for logs and metrics.
    pub fn status(&self) -> JwksStatus {
        let (age_secs, last_error) = {
            let state = self.inner.lock_state();
            (
                state.installed_at.map(|at| at.elapsed().as_secs()),
                state.last_error.clone(),
            )
        };
        let current = self.current();
        JwksStatus {
            age_secs,
            last_error,
            fetches: self.inner.fetches.load(Ordering::Relaxed),
            ed25519_keys: current.as_ref().map_or(0, |keys| keys.ed25519.len()),
            rsa_keys: current.as_ref().map_or(0, |keys| keys.rsa.len()),
        }
    }
}

/// The background task. Holds only a `Weak` while sleeping, so it does not keep the cache alive.
async fn refresh_loop(weak: Weak<Inner>) {
    loop {
        let due = {
            let Some(inner) = weak.upgrade() else { return };
            inner.lock_state().next_refresh_at
        };
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        let mut last_attempt = inner.fetch_gate.lock().await;
        // A refresh after a miss may have run while we slept or waited, and moved the schedule.
        let still_due = inner
            .lock_state()
            .next_refresh_at
            .is_none_or(|due| due <= Instant::now());
        if still_due {
            inner.attempt(&mut last_attempt).await;
        }
    }
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain fields updated together; a panic elsewhere cannot leave them
        // half-written in a way that matters, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One fetch, installed on success, logged and recorded either way. The caller holds the
    /// fetch gate, whose value this updates. True when a set was installed.
    async fn attempt(&self, last_attempt: &mut Option<Instant>) -> bool {
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok((parsed, max_age)) => {
                for skipped in &parsed.skipped {
                    tracing::debug!(
                        index = skipped.index,
                        kty = skipped.kty.as_deref().unwrap_or("-"),
                        why = skipped.why,
                        "JWKS key skipped"
                    );
                }
                let lifetime = self.lifetime(max_age);
                tracing::info!(
                    url = %self.url,
                    ed25519_keys = parsed.keys.ed25519.len(),
                    rsa_keys = parsed.keys.rsa.len(),
                    skipped_keys = parsed.skipped.len(),
                    refresh_in_secs = lifetime.as_secs(),
                    "JWKS key set installed"
                );
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::new(parsed.keys));
                self.generation.fetch_add(1, Ordering::Release);
                let now = Instant::now();
                let mut state = self.lock_state();
                state.installed_at = Some(now);
                state.last_error = None;
                state.consecutive_failures = 0;
                state.next_refresh_at = Some(now + lifetime);
                crate::observe::jwks_fetch(true);
                true
            }
            Err(error) => {
                let chain = error_chain(&error);
                let mut state = self.lock_state();
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                let retry_in = self.retry_delay(state.consecutive_failures);
                tracing::warn!(
                    url = %self.url,
                    error = %chain,
                    key_set_age_secs = state.installed_at.map(|at| at.elapsed().as_secs()),
                    retry_in_secs = retry_in.as_secs(),
                    "JWKS fetch failed; keeping the last good key set"
                );
                state.last_error = Some(chain);
                state.next_refresh_at = Some(Instant::now() + retry_in);
                crate::observe::jwks_fetch(false);
                false
            }
        }
    }

    async fn fetch(&self) -> Result<(crate::verify::ParsedJwks, Option<Duration>), JwksError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut response = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(JwksError::Request)?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status()));
        }
        let max_age = max_age(response.headers());
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        // Read chunk by chunk: a missing or lying Content-Length must not make us buffer
        // an unbounded body.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(JwksError::Request)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let parsed = parse_jwks(&body).map_err(JwksError::Document)?;
        // Installing an empty set would refuse every dynamic delivery; an empty or all-foreign
        // document is far likelier a format change or an outage page than a real revocation.
        if parsed.keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                skipped: parsed.skipped.len(),
            });
        }
        Ok((parsed, max_age))
    }

    /// How long a freshly fetched set is used before the background task refetches it.
    fn lifetime(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .map(|served| served.min(MAX_SERVED_MAX_AGE))
            .unwrap_or(self.ttl)
            .max(self.min_refresh)
            .max(MIN_SCHEDULE)
    }

    /// Backoff after failures: `min_refresh` doubled per failure, capped at the TTL, so an
    /// outage costs a handful of requests an hour rather than one every few seconds.
    fn retry_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.min_refresh
            .max(MIN_SCHEDULE)
            .saturating_mul(1 << doublings)
            .min(self.ttl.max(MIN_SCHEDULE))
    }
}

/// The `max-age` directive of `Cache-Control`, if any.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|directive| {
            let (name, value) = directive.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("max-age") {
                return None;
            }
            let seconds = value.trim().trim_matches('"').parse::<u64>().ok()?;
            Some(Duration::from_secs(seconds))
        })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::Router;
    use axum::extract::State as AxumState;
    use axum::http::HeaderValue;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use tokio::net::TcpListener;

    use super::*;

    /// A stand-in for Google's JWKS endpoint: serves whatever document it holds, counts hits.
    #[derive(Clone, Default)]
    struct Served {
        hits: Arc<AtomicUsize>,
        document: Arc<Mutex<String>>,
        cache_control: Option<&'static str>,
        /// Answer slowly, so that concurrent callers pile up behind one fetch.
        delay: Duration,
    }

    impl Served {
        fn with_keys(seeds: &[u8]) -> Self {
            let served = Served::default();
            served.set_keys(seeds);
            served
        }

        fn set_keys(&self, seeds: &[u8]) {
            *self.document.lock().unwrap() = jwks(seeds);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn public_key(seed: u8) -> ed25519_dalek::VerifyingKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    fn jwks(seeds: &[u8]) -> String {
        let keys: Vec<serde_json::Value> = seeds
            .iter()
            .map(|seed| {
                let x = URL_SAFE_NO_PAD.encode(public_key(*seed).as_bytes());
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x})
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    async fn serve_jwks(AxumState(served): AxumState<Served>) -> impl IntoResponse {
        served.hits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(served.delay).await;
        let document = served.document.lock().unwrap().clone();
        let mut headers = HeaderMap::new();
        if let Some(value) = served.cache_control {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(value));
        }
        (headers, document)
    }

    /// Serves on 127.0.0.1:0; returns the URL and the server task (abort it to take it away).
    async fn spawn_server(served: Served) -> (reqwest::Url, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .with_state(served);
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let url = format!("http://{address}/jwks.json").parse().unwrap();
        (url, server)
    }

    fn cache(url: reqwest::Url, ttl: Duration, min_refresh: Duration) -> JwksCache {
        // No idle connections: "the server is gone" must mean refused connections, not a
        // kept-alive one to a connection task that outlives the aborted server.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        JwksCache::new(url, client, ttl, min_refresh)
    }

    fn holds(cache: &JwksCache, seed: u8) -> bool {
        cache
            .current()
            .is_some_and(|keys| keys.ed25519.contains(&public_key(seed)))
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Verifies a `signature` over a fixed delivery by the shared policy, at the delivery's time.
    async fn judge(cache: &JwksCache, signature: &str) -> Result<Verified, Rejection> {
        let checked = CheckedHeaders {
            id: "msg_policy",
            timestamp: 1_700_000_000,
            signature,
        };
        let (verdict, _) = verify_refetching(
            Some(cache),
            &checked,
            b"{}",
            &Keys::default(),
            &Policy::default(),
            1_700_000_000,
        )
        .await;
        verdict
    }

    fn signed_v1a(seed: u8) -> String {
        let key = crate::verify::WebhookSigningKey::from_signing_key(
            ed25519_dalek::SigningKey::from_bytes(&[seed; 32]),
        );
        crate::verify::sign_v1a(&key, "msg_policy", 1_700_000_000, b"{}")
    }

    #[tokio::test]
    async fn a_v1a_delivery_signed_with_a_key_added_since_the_last_fetch_verifies_after_one_refetch()
     {
        let served = Served::with_keys(&[1]);
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_millis(1));
        assert!(cache.refresh_after_miss().await);
        served.set_keys(&[1, 2]);
        tokio::time::sleep(Duration::from_millis(5)).await; // past min_refresh

        let verified = judge(&cache, &signed_v1a(2)).await.unwrap();

        assert_eq!(verified.scheme.as_str(), "v1a");
        assert_eq!(served.hits(), 2, "one refetch after the miss");
    }

    #[tokio::test]
    async fn a_failure_google_keys_could_not_fix_never_refetches() {
        let served = Served::with_keys(&[1]);
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_millis(1));

        let v1_only = judge(&cache, "v1,bm90IGEgc2lnbmF0dXJl").await;

        assert_eq!(v1_only, Err(Rejection::InvalidSignature));
        assert_eq!(
            served.hits(),
            0,
            "a v1 failure is not Google's keys' business"
        );
        // A v1a entry signed by a key nobody publishes: one refetch, then the refusal.
        assert_eq!(
            judge(&cache, &signed_v1a(9)).await,
            Err(Rejection::InvalidSignature)
        );
        assert_eq!(served.hits(), 1);
    }

    #[tokio::test]
    async fn the_initial_fetch_runs_in_the_background_and_installs_the_set() {
        let served = Served::with_keys(&[1, 2]);
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_secs(30));
        assert!(cache.current().is_none());

        let _task = cache.spawn_initial_fetch();

        wait_until("the set is installed", || cache.current().is_some()).await;
        assert!(holds(&cache, 1) && holds(&cache, 2));
        let status = cache.status();
        assert_eq!((status.fetches, status.ed25519_keys), (1, 2));
        assert_eq!(status.last_error, None);
    }

    #[tokio::test]
    async fn fifty_concurrent_misses_cause_at_most_one_fetch_per_interval() {
        let served = Served {
            delay: Duration::from_millis(200),
            ..Served::with_keys(&[1])
        };
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_secs(60));

        let misses: Vec<_> = (0..50)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.refresh_after_miss().await })
            })
            .collect();
        let mut installed = Vec::new();
        for miss in misses {
            installed.push(miss.await.unwrap());
        }
        // Later misses within the interval do not fetch either.
        let late = cache.refresh_after_miss().await;

        assert_eq!(served.hits(), 1);
        assert!(
            installed.iter().all(|was| *was),
            "every waiter shares the one fetch's result"
        );
        assert!(!late);
        assert!(holds(&cache, 1));
    }

    #[tokio::test]
    async fn a_key_added_to_the_jwks_later_is_installed_after_one_refresh() {
        let served = Served::with_keys(&[1]);
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_millis(50));
        let _task = cache.spawn_initial_fetch();
        wait_until("the first set is installed", || cache.current().is_some()).await;
        assert!(!holds(&cache, 2));

        served.set_keys(&[1, 2]);
        tokio::time::sleep(Duration::from_millis(60)).await; // past min_refresh
        let installed = cache.refresh_after_miss().await;

        assert!(installed);
        assert!(holds(&cache, 2));
        assert_eq!(served.hits(), 2);
    }

    #[tokio::test]
    async fn the_cached_key_is_still_served_when_the_jwks_server_is_gone() {
        let served = Served::with_keys(&[1]);
        let (url, server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_millis(10));
        assert!(cache.refresh_after_miss().await);

        server.abort();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let installed = cache.refresh_after_miss().await;

        assert!(!installed);
        assert!(holds(&cache, 1));
        let status = cache.status();
        assert!(status.last_error.is_some(), "{status:?}");
        assert_eq!(status.fetches, 2);
    }

    #[tokio::test]
    async fn a_malformed_or_empty_document_keeps_the_last_good_set() {
        let served = Served::with_keys(&[1]);
        let (url, _server) = spawn_server(served.clone()).await;
        let cache = cache(url, Duration::from_secs(3600), Duration::from_millis(10));
        assert!(cache.refresh_after_miss().await);

        for bad in [
            "<html>oops</html>",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "EC"}]}"#,
        ] {
            *served.document.lock().unwrap() = bad.to_owned();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!cache.refresh_after_miss().await, "{bad}");
            assert!(holds(&cache, 1), "{bad}");
        }
        assert_eq!(served.hits(), 4);
    }

    #[tokio::test]
    async fn a_served_max_age_schedules_the_next_fetch_instead_of_the_ttl() {
        let short = Served {
            cache_control: Some("public, max-age=1, must-revalidate"),
            ..Served::with_keys(&[1])
        };
        let plain = Served::with_keys(&[1]);
        let (short_url, _short_server) = spawn_server(short.clone()).await;
        let (plain_url, _plain_server) = spawn_server(plain.clone()).await;
        let ttl = Duration::from_secs(3600);
        let min_refresh = Duration::from_millis(100);
        let short_cache = cache(short_url, ttl, min_refresh);
        let plain_cache = cache(plain_url, ttl, min_refresh);

        let _short_task = short_cache.spawn_initial_fetch();
        let _plain_task = plain_cache.spawn_initial_fetch();

        wait_until("max-age=1 expired and was refetched", || short.hits() >= 2).await;
        assert_eq!(plain.hits(), 1, "without max-age the 1 h TTL applies");
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut headers = HeaderMap::new();
        assert_eq!(max_age(&headers), None);
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, Max-Age=19379, must-revalidate, no-transform"),
        );
        assert_eq!(max_age(&headers), Some(Duration::from_secs(19379)));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=soon"));
        assert_eq!(max_age(&headers), None);
    }

    #[test]
    fn lifetimes_and_backoff_stay_within_their_bounds() {
        let cache = cache(
            "http://127.0.0.1:9/jwks.json".parse().unwrap(),
            Duration::from_secs(3600),
            Duration::from_secs(30),
        );
        let inner = &cache.inner;
        assert_eq!(inner.lifetime(None), Duration::from_secs(3600));
        assert_eq!(
            inner.lifetime(Some(Duration::from_secs(600))),
            Duration::from_secs(600)
        );
        assert_eq!(
            inner.lifetime(Some(Duration::ZERO)),
            Duration::from_secs(30)
        );
        assert_eq!(
            inner.lifetime(Some(Duration::from_secs(7 * 24 * 3600))),
            MAX_SERVED_MAX_AGE
        );
        assert_eq!(inner.retry_delay(1), Duration::from_secs(30));
        assert_eq!(inner.retry_delay(2), Duration::from_secs(60));
        assert_eq!(inner.retry_delay(40), Duration::from_secs(3600));
    }
}
