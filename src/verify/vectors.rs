//! Every case of the Standard Webhooks vectors (`tests/data/standard-webhooks-vectors.json`, a
//! copy of `../shared/standard-webhooks-vectors.json`), run through the verifier at the case's
//! own clock.

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    secret: String,
    msg_id: Option<String>,
    timestamp: Option<String>,
    payload: Option<String>,
    payload_repeat: Option<Repeat>,
    signature_header: Option<String>,
    expect: String,
    reason: String,
    now: i64,
    scheme: String,
    signing_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repeat {
    char: String,
    count: usize,
}

#[derive(Debug, Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

const VECTORS: &str = include_str!("../../tests/data/standard-webhooks-vectors.json");

fn cases() -> Vec<Case> {
    serde_json::from_str::<Vectors>(VECTORS)
        .expect("vectors parse")
        .cases
}

impl Case {
    fn body(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_repeat) {
            (Some(p), _) => p.as_bytes().to_vec(),
            (None, Some(r)) => r.char.repeat(r.count).into_bytes(),
            (None, None) => panic!("{}: no payload", self.name),
        }
    }

    fn headers(&self) -> WebhookHeaders<'_> {
        WebhookHeaders {
            id: self.msg_id.as_deref(),
            timestamp: self.timestamp.as_deref(),
            signature: self.signature_header.as_deref(),
        }
    }
}

/// The verifier's outcome in the vectors' vocabulary.
fn reason_of(result: &Result<Verified, Rejection>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Rejection::InvalidSignature) => "no_matching_signature",
        Err(Rejection::InvalidHeader {
            header: "webhook-timestamp",
            ..
        }) => "invalid_timestamp",
        Err(other) => other.code(),
    }
}

#[test]
fn every_hmac_vector_gives_its_expected_outcome() {
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.scheme == "v1") {
        let secret = WebhookSecret::parse(&case.secret);
        if case.reason == "secret_rejected" {
            assert!(secret.is_err(), "{}: secret should be rejected", case.name);
            checked += 1;
            continue;
        }
        let keys = Keys {
            secrets: vec![secret.unwrap_or_else(|e| panic!("{}: {e}", case.name))],
            ..Keys::default()
        };
        let result = verify(
            &case.headers(),
            &case.body(),
            &keys,
            None,
            &Policy::default(),
            case.now,
        );
        assert_eq!(reason_of(&result), case.reason, "{}", case.name);
        assert_eq!(result.is_ok(), case.expect == "valid", "{}", case.name);
        checked += 1;
    }
    assert_eq!(checked, 44, "every v1 case ran");
}

#[test]
fn every_ed25519_vector_gives_its_expected_outcome() {
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.scheme == "v1a") {
        // For v1a cases `secret` is the whpk_ public key that verifies.
        let key = PublicKey::parse(&case.secret).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let keys = Keys {
            public_keys: vec![key],
            ..Keys::default()
        };
        let result = verify(
            &case.headers(),
            &case.body(),
            &keys,
            None,
            &Policy::default(),
            case.now,
        );
        assert_eq!(reason_of(&result), case.reason, "{}", case.name);
        assert_eq!(result.is_ok(), case.expect == "valid", "{}", case.name);
        if let Ok(verified) = result {
            assert_eq!(verified.scheme, Scheme::V1a, "{}", case.name);
        }
        checked += 1;
    }
    assert_eq!(checked, 3, "every v1a case ran");
}

#[test]
fn every_one_of_the_47_vectors_is_run_by_one_of_the_two_tests() {
    let all = cases();
    let run = all
        .iter()
        .filter(|c| c.scheme == "v1" || c.scheme == "v1a")
        .count();
    assert_eq!((all.len(), run), (47, 47));
}

#[test]
fn signing_with_the_vectors_whsk_key_reproduces_their_v1a_signature() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "A_v1a_valid_ed25519")
        .expect("the v1a vector is there");
    let key = WebhookSigningKey::parse(case.signing_key.as_deref().expect("a whsk_ key"))
        .expect("the whsk_ key parses");
    let timestamp = case
        .timestamp
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap();
    let signature = sign_v1a(
        &key,
        case.msg_id.as_deref().unwrap(),
        timestamp,
        &case.body(),
    );
    // Ed25519 is deterministic, so the signature is the vector's byte for byte.
    assert_eq!(Some(signature.as_str()), case.signature_header.as_deref());
}

#[test]
fn signing_reproduces_the_reference_vector() {
    let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let signature = sign_v1(
        &secret,
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1649367553,
        br#"{"email":"test@example.com","username":"test_user"}"#,
    );
    assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
}

#[test]
fn any_of_several_configured_secrets_verifies() {
    let old = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let new = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    let signature = sign_v1(&new, "msg_1", 1000, b"{}");
    let headers = WebhookHeaders {
        id: Some("msg_1"),
        timestamp: Some("1000"),
        signature: Some(&signature),
    };
    let keys = Keys {
        secrets: vec![old, new],
        ..Keys::default()
    };
    let verified = verify(&headers, b"{}", &keys, None, &Policy::default(), 1000).unwrap();
    assert_eq!(verified.scheme, Scheme::V1);
}

#[test]
fn an_overlong_or_control_character_webhook_id_is_an_invalid_header() {
    let long = "m".repeat(MAX_WEBHOOK_ID_BYTES + 1);
    for id in [long.as_str(), "msg\n1", "msg\u{7f}"] {
        let headers = WebhookHeaders {
            id: Some(id),
            timestamp: Some("1000"),
            signature: Some("v1,x"),
        };
        assert_eq!(
            check_headers(&headers).unwrap_err().code(),
            "invalid_header"
        );
    }
    let at_limit = "m".repeat(MAX_WEBHOOK_ID_BYTES);
    let headers = WebhookHeaders {
        id: Some(&at_limit),
        timestamp: Some("1000"),
        signature: Some("v1,x"),
    };
    assert!(check_headers(&headers).is_ok());
}

#[test]
fn an_extreme_timestamp_is_too_old_or_too_new_without_overflow() {
    let policy = Policy::default();
    assert!(matches!(
        check_freshness(i64::MIN, i64::MAX, &policy),
        Err(Rejection::TimestampTooOld { .. })
    ));
    assert!(matches!(
        check_freshness(i64::MAX, i64::MIN, &policy),
        Err(Rejection::TimestampTooNew { .. })
    ));
}

#[test]
fn the_vendored_vectors_match_the_shared_ones_when_present() {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/standard-webhooks-vectors.json"
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(
            text, VECTORS,
            "tests/data copy is stale: copy ../shared again"
        );
    }
}
