//! Dynamic-webhook deliveries through the public entry point: `v1a` against published and
//! configured Ed25519 keys, RS256 JWTs against published RSA keys, mixed with `v1`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const NOW: i64 = 1_700_000_000;
const ID: &str = "msg_2xyz";
const BODY: &[u8] = br#"{"type":"batch.succeeded","data":{"id":"batches/1"}}"#;
const RSA_KEY_A: &[u8] = include_bytes!("../../tests/data/jwt-test-key-a.pem");
const RSA_KEY_B: &[u8] = include_bytes!("../../tests/data/jwt-test-key-b.pem");
const TEST_JWKS: &str = include_str!("../../tests/data/jwt-test-keys.jwks.json");

/// A deterministic Ed25519 key per seed byte: no randomness needed to tell keys apart.
fn ed25519_key(seed: u8) -> WebhookSigningKey {
    WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&[seed; 32]))
}

/// A JWKS holding the public halves of the Ed25519 keys with these seeds, plus the test RSA keys.
fn published(seeds: &[u8]) -> PublishedKeys {
    let mut document: serde_json::Value = serde_json::from_str(TEST_JWKS).unwrap();
    let keys = document["keys"].as_array_mut().unwrap();
    for seed in seeds {
        let public = ed25519_key(*seed).public_key();
        let x = URL_SAFE_NO_PAD.encode(public.verifying_key().as_bytes());
        keys.push(json!({"kty": "OKP", "crv": "Ed25519", "x": x}));
    }
    parse_jwks(document.to_string().as_bytes()).unwrap().keys
}

fn deliver(
    signature: &str,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
    policy: &Policy,
) -> Result<Verified, Rejection> {
    let timestamp = NOW.to_string();
    let headers = WebhookHeaders {
        id: Some(ID),
        timestamp: Some(&timestamp),
        signature: Some(signature),
    };
    verify(&headers, body, keys, published, policy, NOW)
}

fn scheme_of(result: Result<Verified, Rejection>) -> Result<Scheme, Rejection> {
    result.map(|verified| verified.scheme)
}

fn jwt(claims: serde_json::Value, kid: &str, pem: &[u8]) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
}

#[test]
fn a_v1a_delivery_signed_by_the_second_of_two_published_keys_verifies() {
    let signature = sign_v1a(&ed25519_key(2), ID, NOW, BODY);
    let published = published(&[1, 2]);

    let result = deliver(
        &signature,
        BODY,
        &Keys::default(),
        Some(&published),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Ok(Scheme::V1a));
}

#[test]
fn a_v1a_delivery_signed_by_a_key_not_in_the_set_is_refused() {
    let signature = sign_v1a(&ed25519_key(3), ID, NOW, BODY);
    let published = published(&[1, 2]);

    let result = deliver(
        &signature,
        BODY,
        &Keys::default(),
        Some(&published),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_v1a_delivery_over_a_changed_body_is_refused() {
    let signature = sign_v1a(&ed25519_key(1), ID, NOW, BODY);
    let published = published(&[1]);
    let changed = br#"{"type":"batch.succeeded","data":{"id":"batches/2"}}"#;

    let result = deliver(
        &signature,
        changed,
        &Keys::default(),
        Some(&published),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_bad_v1_entry_beside_a_good_v1a_entry_verifies_as_v1a() {
    let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let bad_v1 = format!("v1,{}", STANDARD.encode([7u8; 32]));
    let good_v1a = sign_v1a(&ed25519_key(1), ID, NOW, BODY);
    let keys = Keys {
        secrets: vec![secret],
        ..Keys::default()
    };

    let result = deliver(
        &format!("{bad_v1} {good_v1a}"),
        BODY,
        &keys,
        Some(&published(&[1])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Ok(Scheme::V1a));
}

#[test]
fn a_v1a_delivery_verifies_with_a_configured_whpk_key_and_nothing_published() {
    let signing = ed25519_key(5);
    let configured = PublicKey::parse(&signing.public_key().to_string()).unwrap();
    let keys = Keys {
        public_keys: vec![configured],
        ..Keys::default()
    };

    let result = deliver(
        &sign_v1a(&signing, ID, NOW, BODY),
        BODY,
        &keys,
        None,
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Ok(Scheme::V1a));
}

#[test]
fn a_v1a_delivery_is_refused_while_no_key_set_has_been_fetched() {
    let signature = sign_v1a(&ed25519_key(1), ID, NOW, BODY);

    let result = deliver(&signature, BODY, &Keys::default(), None, &Policy::default());

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_valid_rs256_jwt_verifies_as_jwt() {
    let token = jwt(json!({"iat": NOW, "exp": NOW + 300}), "test-a", RSA_KEY_A);

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Ok(Scheme::Jwt));
}

#[test]
fn an_expired_jwt_is_refused() {
    let token = jwt(json!({"exp": NOW - 3600}), "test-a", RSA_KEY_A);

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_jwt_signed_by_another_key_under_the_right_kid_is_refused() {
    let token = jwt(json!({}), "test-a", RSA_KEY_B);

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_jwt_with_an_unknown_kid_is_refused() {
    let token = jwt(json!({}), "rotated-away", RSA_KEY_A);

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_jwt_with_alg_none_is_refused() {
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"test-a"}"#),
        URL_SAFE_NO_PAD.encode("{}"),
        URL_SAFE_NO_PAD.encode("x"),
    );

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_jwt_with_alg_hs256_keyed_with_the_public_key_bytes_is_refused() {
    let published = published(&[]);
    let jwks: serde_json::Value = serde_json::from_str(TEST_JWKS).unwrap();
    let modulus = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-a".to_owned());
    let token =
        jsonwebtoken::encode(&header, &json!({}), &EncodingKey::from_secret(&modulus)).unwrap();

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published),
        &Policy::default(),
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_valid_jwt_is_refused_when_jwt_acceptance_is_off() {
    let token = jwt(json!({}), "test-a", RSA_KEY_A);
    let policy = Policy {
        accept_jwt: false,
        ..Policy::default()
    };

    let result = deliver(
        &token,
        BODY,
        &Keys::default(),
        Some(&published(&[])),
        &policy,
    );

    assert_eq!(scheme_of(result), Err(Rejection::InvalidSignature));
}

#[test]
fn a_jwt_delivery_still_needs_a_fresh_webhook_timestamp() {
    let token = jwt(json!({}), "test-a", RSA_KEY_A);
    let stale = (NOW - 301).to_string();
    let headers = WebhookHeaders {
        id: Some(ID),
        timestamp: Some(&stale),
        signature: Some(&token),
    };
    let published = published(&[]);

    let result = verify(
        &headers,
        BODY,
        &Keys::default(),
        Some(&published),
        &Policy::default(),
        NOW,
    );

    assert!(matches!(result, Err(Rejection::TimestampTooOld { .. })));
}

#[test]
fn only_a_v1a_entry_or_an_accepted_jwt_wants_the_published_keys() {
    let token = jwt(json!({}), "test-a", RSA_KEY_A);
    let accepting = Policy {
        accept_jwt: true,
        ..Policy::default()
    };
    let refusing = Policy {
        accept_jwt: false,
        ..Policy::default()
    };
    assert!(wants_published_keys(&token, &accepting));
    assert!(!wants_published_keys(&token, &refusing));
    for policy in [&accepting, &refusing] {
        assert!(wants_published_keys("v1,abc= v1a,def=", policy));
        assert!(!wants_published_keys("v1,abc= v2,def=", policy));
        assert!(!wants_published_keys("v1a", policy));
    }
}
