//! `verify::parse_jwks` on an arbitrary document, then the parsed keys put to use: a `v1a` and
//! a JWT delivery are verified with them, so odd but accepted keys (a strange RSA modulus, an
//! Ed25519 point) reach `ring` and `ed25519-dalek`.

#![no_main]

use std::sync::LazyLock;

use gemhook::verify::{Keys, Policy, WebhookHeaders, parse_jwks, verify};
use gemhook_fuzz::{VECTOR_NOW, vector_published};
use libfuzzer_sys::fuzz_target;

/// The vectors' valid `v1a` delivery (case A_v1a_valid_ed25519).
const V1A: WebhookHeaders<'static> = WebhookHeaders {
    id: Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
    timestamp: Some("1614265330"),
    signature: Some(concat!(
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+",
        "m7TBAg=="
    )),
};
const V1A_BODY: &[u8] = br#"{"test": 2432232314}"#;

/// A compact RS256 JWT with `kid` `test-a` and no claims, signed by the test key whose public
/// half is `test-a` in tests/data/jwt-test-keys.jwks.json.
static JWT: LazyLock<String> = LazyLock::new(|| {
    let token = gemhook_fuzz::jwt(&serde_json::json!({}), "test-a");
    // Both deliveries verify with the right keys, so a document's keys decide the outcome.
    let published = vector_published();
    let policy = Policy::default();
    let jwt = WebhookHeaders {
        signature: Some(&token),
        ..V1A
    };
    for (headers, body) in [(V1A, V1A_BODY), (jwt, b"{}")] {
        let outcome = verify(
            &headers,
            body,
            &Keys::default(),
            Some(&published),
            &policy,
            VECTOR_NOW,
        );
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    token
});

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_jwks(data) else {
        return;
    };
    for skipped in &parsed.skipped {
        // The reported type is remote input, cut to 32 characters.
        let kty_chars = skipped.kty.as_ref().map_or(0, |kty| kty.chars().count());
        assert!(kty_chars <= 32 && !skipped.why.is_empty());
    }
    let keys = Keys::default();
    let policy = Policy::default();
    let jwt = WebhookHeaders {
        signature: Some(JWT.as_str()),
        ..V1A
    };
    for (headers, body) in [(V1A, V1A_BODY), (jwt, b"{}")] {
        let _ = verify(
            &headers,
            body,
            &keys,
            Some(&parsed.keys),
            &policy,
            VECTOR_NOW,
        );
    }
});
