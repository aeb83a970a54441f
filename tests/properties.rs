//! Properties of the pure parsers that see attacker bytes: the webhook headers and signatures
//! (`verify`), the event envelope, JWKS documents and `gemhook verify` captures.
//!
//! Its own test binary with no database or network (`cargo test --test properties`). The case
//! counts keep it to a few seconds in a debug build; the fuzz targets in `fuzz/` explore the same
//! functions for longer. `seeds.rs` beside this file writes those targets' seed corpus.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use gemhook::envelope::{self, EventStatus, KNOWN_TYPES};
use gemhook::tools::capture::{explain_capture, parse_capture};
use gemhook::tools::explain::explain;
use gemhook::verify::{
    Keys, MAX_WEBHOOK_ID_BYTES, Policy, PublishedKeys, Rejection, Scheme, WebhookHeaders,
    WebhookSecret, WebhookSigningKey, check_headers, parse_jwks, sign_v1, sign_v1a,
    signature_entries, verify,
};
use proptest::prelude::*;
use serde_json::json;

#[path = "properties/seeds.rs"]
mod seeds;

const README: &str = include_str!("../README.md");
const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_PUBLIC_KEY: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";
const TEST_JWKS: &[u8] = include_bytes!("data/jwt-test-keys.jwks.json");
const TOLERANCE_SECS: i64 = 300;

/// The keys arbitrary deliveries are checked against: a vector secret, the vector public key.
static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    secrets: vec![WebhookSecret::parse(VECTOR_SECRET).unwrap()],
    public_keys: vec![gemhook::verify::PublicKey::parse(VECTOR_PUBLIC_KEY).unwrap()],
});

/// The committed test JWKS (two RSA keys), as Google's published set.
static PUBLISHED: LazyLock<PublishedKeys> = LazyLock::new(|| parse_jwks(TEST_JWKS).unwrap().keys);

/// A reason code is documented when README.md's status table has its `{"error":...}` body.
fn assert_documented(rejection: &Rejection) {
    let code = rejection.code();
    assert!(!code.is_empty(), "{rejection:?} has an empty code");
    let body = format!("`{{\"error\":\"{code}\"}}`");
    assert!(README.contains(&body), "{code} is not in README.md's table");
}

// ---- strategies ------------------------------------------------------------------------------

/// Header text: anything at all, or text shaped like the real thing so that the later checks
/// are reached too.
fn header_text(shaped: &'static str) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.9,
        prop_oneof![
            any::<String>(),
            shaped,
            // Control characters, spaces and non-ASCII where they should not be.
            "[ \\t\\x00-\\x1f\\x7f\u{e9}\u{2028}a-z0-9,.]{0,40}",
        ],
    )
}

fn signature_text() -> impl Strategy<Value = Option<String>> {
    header_text(
        "(v1a?|v2|V1)?,[A-Za-z0-9+/=_-]{0,90}( {1,2}(v1a?|v2|V1)?,[A-Za-z0-9+/=_-]{0,90}){0,3}\
         |[A-Za-z0-9_-]{1,30}\\.[A-Za-z0-9_-]{1,30}\\.[A-Za-z0-9_-]{1,30}",
    )
}

/// A `webhook-id` that passes the header checks: 1 to 256 bytes without control characters.
fn valid_id() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,64}".prop_filter("within the byte bound", |id| {
        id.len() <= MAX_WEBHOOK_ID_BYTES
    })
}

/// A timestamp anywhere in i64, and a clock within the tolerance of it.
fn timestamp_and_clock() -> impl Strategy<Value = (i64, i64)> {
    let timestamp = prop_oneof![
        any::<i64>(),
        1_600_000_000i64..1_900_000_000,
        Just(i64::MIN),
        Just(i64::MAX),
    ];
    (timestamp, -TOLERANCE_SECS..=TOLERANCE_SECS)
        // Saturating only shrinks the difference, so the clock stays within the tolerance.
        .prop_map(|(timestamp, skew)| (timestamp, timestamp.saturating_add(skew)))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..300)
}

fn signing_key() -> impl Strategy<Value = WebhookSigningKey> {
    any::<[u8; 32]>()
        .prop_map(|seed| WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&seed)))
}

// ---- verify ----------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_headers_or_body_panic_the_verifier_and_every_rejection_has_a_documented_code(
        id in header_text("msg_[A-Za-z0-9]{0,30}"),
        timestamp in header_text("[+-]?[0-9]{1,20}"),
        signature in signature_text(),
        body in body(),
        now in prop_oneof![any::<i64>(), 1_600_000_000i64..1_900_000_000],
    ) {
        let headers = WebhookHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        let policy = Policy::default();
        let outcome = verify(&headers, &body, &KEYS, Some(&PUBLISHED), &policy, now);
        if let Err(rejection) = &outcome {
            assert_documented(rejection);
        }
        if let Err(rejection) = check_headers(&headers) {
            assert_documented(&rejection);
            prop_assert_eq!(outcome.as_ref().err(), Some(&rejection));
        }
        // The explanation's verdict is the verifier's own.
        let explanation = explain(&headers, &body, &KEYS, Some(&PUBLISHED), &policy, now);
        prop_assert_eq!(&explanation.outcome, &outcome);
        prop_assert_eq!(explanation.accepted(), outcome.is_ok());
        if let Some(signature) = &signature {
            for entry in signature_entries(signature) {
                prop_assert!(!entry.version.contains([' ', ',']) && !entry.value.contains(' '));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_delivery_signed_with_sign_v1_within_the_tolerance_is_accepted(
        id in valid_id(),
        (timestamp, now) in timestamp_and_clock(),
        body in body(),
        key in prop::collection::vec(any::<u8>(), 1..64),
        other_keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 0..3),
        position in any::<prop::sample::Index>(),
        decoys in prop::collection::vec("v1,[A-Za-z0-9+/]{43}=|v1a,[A-Za-z0-9+/]{86}==|v2,x", 0..3),
    ) {
        let secret = WebhookSecret::from_key_bytes(&key);
        let signature = sign_v1(&secret, &id, timestamp, &body);
        // Our entry among decoys, our secret among others (a rotation): neither may matter.
        let mut entries = decoys;
        entries.insert(position.index(entries.len() + 1), signature);
        let mut secrets: Vec<WebhookSecret> =
            other_keys.iter().map(|k| WebhookSecret::from_key_bytes(k)).collect();
        secrets.insert(position.index(secrets.len() + 1), secret);
        let keys = Keys { secrets, public_keys: Vec::new() };
        let header = entries.join(" ");
        let timestamp_text = timestamp.to_string();
        let headers = WebhookHeaders {
            id: Some(&id),
            timestamp: Some(&timestamp_text),
            signature: Some(&header),
        };

        let outcome = verify(&headers, &body, &keys, None, &Policy::default(), now);

        prop_assert_eq!(outcome.map(|v| (v.scheme, v.timestamp)), Ok((Scheme::V1, timestamp)));
    }

    #[test]
    fn a_v1_signed_delivery_with_one_body_byte_changed_is_refused(
        id in valid_id(),
        (timestamp, now) in timestamp_and_clock(),
        body in prop::collection::vec(any::<u8>(), 1..300),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        key in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let secret = WebhookSecret::from_key_bytes(&key);
        let signature = sign_v1(&secret, &id, timestamp, &body);
        let keys = Keys { secrets: vec![secret], public_keys: Vec::new() };

        let timestamp_text = timestamp.to_string();
        let headers = WebhookHeaders {
            id: Some(&id),
            timestamp: Some(&timestamp_text),
            signature: Some(&signature),
        };
        let changed = one_byte_changed(&body, at, flip);

        let outcome = verify(&headers, &changed, &keys, None, &Policy::default(), now);

        prop_assert_eq!(outcome, Err(Rejection::InvalidSignature));
    }
}

// Fewer cases where Ed25519 runs: unoptimised, one signature costs milliseconds.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_delivery_signed_with_sign_v1a_within_the_tolerance_is_accepted(
        id in valid_id(),
        (timestamp, now) in timestamp_and_clock(),
        body in body(),
        key in signing_key(),
        published in any::<bool>(),
    ) {
        let signature = sign_v1a(&key, &id, timestamp, &body);
        let public = key.public_key();
        // Configured as a whpk_ key, or published in Google's JWKS: both paths verify.
        let (keys, published_keys) = if published {
            let ed25519 = vec![*public.verifying_key()];
            (Keys::default(), Some(PublishedKeys { ed25519, rsa: Vec::new() }))
        } else {
            (Keys { secrets: Vec::new(), public_keys: vec![public] }, None)
        };
        let timestamp_text = timestamp.to_string();
        let headers = WebhookHeaders {
            id: Some(&id),
            timestamp: Some(&timestamp_text),
            signature: Some(&signature),
        };

        let outcome =
            verify(&headers, &body, &keys, published_keys.as_ref(), &Policy::default(), now);

        prop_assert_eq!(outcome.map(|v| v.scheme), Ok(Scheme::V1a));
    }

    #[test]
    fn a_v1a_signed_delivery_with_one_body_byte_changed_is_refused(
        id in valid_id(),
        (timestamp, now) in timestamp_and_clock(),
        body in prop::collection::vec(any::<u8>(), 1..300),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        key in signing_key(),
    ) {
        let signature = sign_v1a(&key, &id, timestamp, &body);
        let keys = Keys { secrets: Vec::new(), public_keys: vec![key.public_key()] };

        let timestamp_text = timestamp.to_string();
        let headers = WebhookHeaders {
            id: Some(&id),
            timestamp: Some(&timestamp_text),
            signature: Some(&signature),
        };
        let changed = one_byte_changed(&body, at, flip);

        let outcome = verify(&headers, &changed, &keys, None, &Policy::default(), now);

        prop_assert_eq!(outcome, Err(Rejection::InvalidSignature));
    }
}

/// `body` with the byte at `at` XORed with `flip`, which is non-zero: the byte always changes.
fn one_byte_changed(body: &[u8], at: prop::sample::Index, flip: u8) -> Vec<u8> {
    let mut changed = body.to_vec();
    changed[at.index(body.len())] ^= flip;
    changed
}

// ---- envelope --------------------------------------------------------------------------------

/// A JSON value for an envelope member: often of the expected kind, sometimes anything.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_envelope_parser_files_any_body_under_a_status(body in prop_oneof![
        body(),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]) {
        let envelope = envelope::parse(&body);
        match envelope.status {
            EventStatus::Unparseable => prop_assert!(envelope.event_type.is_none()),
            EventStatus::Accepted => prop_assert!(
                KNOWN_TYPES.contains(&envelope.event_type.as_deref().unwrap_or_default())
            ),
            EventStatus::Ignored => prop_assert!(
                !KNOWN_TYPES.contains(&envelope.event_type.as_deref().unwrap_or_default())
            ),
        }
    }

    #[test]
    fn an_envelope_of_a_known_type_is_accepted_with_its_string_id(
        event_type in prop::sample::select(KNOWN_TYPES),
        id in ".{1,40}",
        extra in json_value(),
    ) {
        let body = json!({"type": event_type, "data": {"id": id, "extra": extra}, "extra": extra});

        let envelope = envelope::parse(body.to_string().as_bytes());

        prop_assert_eq!(envelope.status, EventStatus::Accepted);
        prop_assert_eq!(envelope.event_type.as_deref(), Some(event_type));
        prop_assert_eq!(envelope.resource_id, Some(id));
    }
}

// ---- JWKS ------------------------------------------------------------------------------------

/// A JWK of any shape, mostly of the members gemhook reads.
fn jwk() -> impl Strategy<Value = serde_json::Value> {
    let member = |values: &'static [&'static str]| {
        prop::option::of(prop_oneof![
            prop::sample::select(values).prop_map(serde_json::Value::from),
            "[A-Za-z0-9_=-]{0,60}".prop_map(serde_json::Value::from),
            json_value(),
        ])
    };
    (
        member(&["OKP", "RSA", "EC", "oct"]),
        member(&["Ed25519", "X25519", "P-256"]),
        member(&["EdDSA", "Ed25519", "RS256", "PS256"]),
        member(&["sig", "enc"]),
        member(&["test-a", ""]),
        member(&["11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"]),
        member(&["AQAB"]),
    )
        .prop_map(|(kty, crv, alg, use_, kid, x, e)| {
            let mut jwk = serde_json::Map::new();
            for (name, value) in [
                ("kty", kty),
                ("crv", crv),
                ("alg", alg),
                ("use", use_),
                ("kid", kid),
                ("x", x.clone()),
                ("n", x),
                ("e", e),
            ] {
                if let Some(value) = value {
                    jwk.insert(name.to_owned(), value);
                }
            }
            serde_json::Value::Object(jwk)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_document_panics_the_jwks_parser_and_each_key_is_used_or_skipped(
        keys in prop::collection::vec(prop_oneof![4 => jwk(), 1 => json_value()], 0..6),
        noise in body(),
    ) {
        let count = keys.len();
        let document = json!({"keys": keys}).to_string();

        let parsed = parse_jwks(document.as_bytes()).expect("a keys array is a JWKS");

        let used = parsed.keys.ed25519.len() + parsed.keys.rsa.len();
        prop_assert_eq!(used + parsed.skipped.len(), count);
        let _ = parse_jwks(&noise);
    }
}

// ---- captures --------------------------------------------------------------------------------

/// A raw HTTP capture: a request line, headers (webhook ones among them) and a body.
fn http_capture() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just("POST /webhooks/gemini HTTP/1.1"),
            Just("POST /"),
            Just("")
        ],
        prop::collection::vec(
            (
                prop_oneof![
                    Just("webhook-id"),
                    Just("Webhook-Timestamp"),
                    Just("webhook-signature"),
                    Just("content-length"),
                    Just("transfer-encoding"),
                    Just("x-other"),
                    Just(" folded"),
                ],
                "[ -~\\t]{0,40}",
            ),
            0..7,
        ),
        prop_oneof![Just("\r\n"), Just("\n")],
        body(),
    )
        .prop_map(|(request_line, headers, end, body)| {
            let mut text = Vec::new();
            if !request_line.is_empty() {
                text.extend_from_slice(format!("{request_line}{end}").as_bytes());
            }
            for (name, value) in headers {
                text.extend_from_slice(format!("{name}: {value}{end}").as_bytes());
            }
            text.extend_from_slice(end.as_bytes());
            text.extend_from_slice(&body);
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_capture_panics_gemhook_verify_and_its_verdict_is_the_verifiers(
        capture in prop_oneof![
            body(),
            http_capture(),
            (json_value(), json_value()).prop_map(|(headers, body)| {
                json!({"headers": headers, "body": body}).to_string().into_bytes()
            }),
        ],
        now in 1_600_000_000i64..1_900_000_000,
    ) {
        let Ok(capture) = parse_capture(&capture) else {
            return Ok(());
        };
        let policy = Policy::default();
        let explanation = explain_capture(&capture, &KEYS, &policy, Some(&PUBLISHED), now);
        let headers = capture.webhook_headers();
        let outcome = verify(&headers, &capture.body, &KEYS, Some(&PUBLISHED), &policy, now);
        // The HTTP layer refuses a header that is not visible ASCII before verifying.
        if explanation.outcome != outcome {
            prop_assert_eq!(explanation.verdict.code, "invalid_header");
        }
        if let Err(rejection) = &explanation.outcome {
            assert_documented(rejection);
            prop_assert!(!explanation.diagnosis.is_empty());
        }
        let _ = explanation.to_string();
        prop_assert!(serde_json::to_string(&explanation).is_ok());
    }
}
