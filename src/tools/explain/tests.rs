//! [`explain`] agrees with [`verify`] everywhere, names what matched, and diagnoses the common
//! failures, without ever showing a secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use hmac::Mac;
use serde_json::{Value, json};

use super::*;
use crate::verify::{
    PublicKey, Scheme, WebhookSigningKey, check_headers, parse_jwks, sign_v1, sign_v1a,
};

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ID: &str = "msg_2b7c1e";
const TS: i64 = 1_700_000_000;
const BODY: &str = r#"{"type":"batch.succeeded","data":{"id":"batches/123","note":"héllo"}}"#;
const VECTORS: &str = include_str!("../../../tests/data/standard-webhooks-vectors.json");

fn two_secrets() -> Keys {
    Keys {
        secrets: vec![
            WebhookSecret::parse(OLD_SECRET).unwrap(),
            WebhookSecret::parse(NEW_SECRET).unwrap(),
        ],
        ..Keys::default()
    }
}

fn new_secret() -> WebhookSecret {
    WebhookSecret::parse(NEW_SECRET).unwrap()
}

fn headers<'a>(id: &'a str, ts: &'a str, signature: &'a str) -> WebhookHeaders<'a> {
    WebhookHeaders {
        id: Some(id),
        timestamp: Some(ts),
        signature: Some(signature),
    }
}

/// Explains, and checks on the way that the verdict is `verify`'s and that no secret leaks.
fn run(
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
    policy: &Policy,
    now: i64,
) -> (Explanation, String) {
    let explanation = explain(headers, body, keys, published, policy, now);
    let verified = verify(headers, body, keys, published, policy, now);
    assert_eq!(explanation.outcome, verified);
    assert_eq!(explanation.accepted(), verified.is_ok());
    let code = verified
        .as_ref()
        .map_or_else(Rejection::code, |_| "accepted");
    assert_eq!(explanation.verdict.code, code);
    let text = explanation.to_string();
    let json = serde_json::to_string(&explanation).unwrap();
    for secret in [OLD_SECRET, NEW_SECRET] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!text.contains(key) && !json.contains(key), "{text}");
    }
    (explanation, text)
}

fn finding(explanation: &Explanation, kind: DiagnosisKind) -> &str {
    explanation
        .diagnosis
        .iter()
        .find(|d| d.kind == kind)
        .map(|d| d.message.as_str())
        .unwrap_or_else(|| panic!("no {kind:?} in {:#?}", explanation.diagnosis))
}

#[test]
fn a_valid_delivery_names_the_entry_and_the_secret_by_position() {
    let signature = sign_v1(&new_secret(), ID, TS, BODY.as_bytes());
    let ts = TS.to_string();
    let (explanation, text) = run(
        &headers(ID, &ts, &signature),
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS + 12,
    );
    assert!(text.starts_with("verdict: accepted (scheme v1)"), "{text}");
    assert!(text.contains("entry #1 matched secret #2"), "{text}");
    assert!(text.contains(": 12 s old;"), "{text}");
    assert_eq!(
        explanation.entries[0].matched,
        Some(KeyRef::Secret { position: 2 })
    );
    assert!(explanation.diagnosis.is_empty());
    let json = serde_json::to_value(&explanation).unwrap();
    assert_eq!(json["verdict"]["code"], "accepted");
    assert_eq!(
        json["entries"][0]["matched"],
        json!({"kind": "secret", "position": 2})
    );
    assert_eq!(json["timestamp"]["age_secs"], 12);
}

#[test]
fn a_tampered_body_is_an_invalid_signature_with_the_generic_diagnosis() {
    let signature = sign_v1(&new_secret(), ID, TS, BODY.as_bytes());
    let tampered = BODY.replace("123", "124");
    let ts = TS.to_string();
    let (explanation, text) = run(
        &headers(ID, &ts, &signature),
        tampered.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    assert!(
        text.starts_with("verdict: rejected: invalid_signature"),
        "{text}"
    );
    assert!(text.contains("entry #1 matched no key"), "{text}");
    assert_eq!(
        finding(&explanation, DiagnosisKind::NoKeyMatched),
        "no configured secret or key produced any of these signatures: the secret is wrong, or \
         the id, timestamp or body differ from what was signed"
    );
}

#[test]
fn common_body_alterations_are_named() {
    let ts = TS.to_string();
    // By hand: serde_json's `Value` would sort the keys, an order the signed body did not have.
    let pretty =
        "{\n  \"type\": \"batch.succeeded\",\n  \"data\": {\n    \"id\": \"batches/123\",\n    \
                  \"note\": \"héllo\"\n  }\n}"
            .as_bytes()
            .to_vec();
    let with_newline = format!("{BODY}\n");
    let cases: [(&[u8], Vec<u8>, &str); 5] = [
        (
            BODY.as_bytes(),
            format!("{BODY}\n").into_bytes(),
            "the body was changed after signing: a trailing newline was added",
        ),
        (
            with_newline.as_bytes(),
            BODY.as_bytes().to_vec(),
            "the body was changed after signing: a trailing newline was removed",
        ),
        (
            b"line one\nline two\n",
            b"line one\r\nline two\r\n".to_vec(),
            "the body was changed after signing: LF line endings were changed to CRLF",
        ),
        (
            BODY.as_bytes(),
            format!("  {BODY} \t").into_bytes(),
            "the body was changed after signing: whitespace was added at the start or end",
        ),
        // Signed compact, received pretty-printed: a logging proxy's doing.
        (
            BODY.as_bytes(),
            pretty,
            "the body was changed after signing: the JSON was re-serialised; what was signed is \
             the same JSON written compactly, without spaces",
        ),
    ];
    for (signed, received, expected) in cases {
        let signature = sign_v1(&new_secret(), ID, TS, signed);
        let (explanation, _) = run(
            &headers(ID, &ts, &signature),
            &received,
            &two_secrets(),
            None,
            &Policy::default(),
            TS,
        );
        assert_eq!(explanation.verdict.code, "invalid_signature");
        let message = finding(&explanation, DiagnosisKind::BodyChanged);
        assert!(message.starts_with(expected), "{message}");
        assert!(message.ends_with("(undoing that, entry #1 matches secret #2)"));
    }
}

#[test]
fn a_pretty_printed_signed_body_received_compact_is_named_too() {
    // The other direction, with keys in a non-sorted order that must be kept.
    let signed = "{\n  \"z\": 1,\n  \"a\": [\n    true,\n    null\n  ],\n  \"m\": {}\n}";
    let received = r#"{"z":1,"a":[true,null],"m":{}}"#;
    let signature = sign_v1(&new_secret(), ID, TS, signed.as_bytes());
    let ts = TS.to_string();
    let (explanation, _) = run(
        &headers(ID, &ts, &signature),
        received.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    let message = finding(&explanation, DiagnosisKind::BodyChanged);
    assert!(
        message.contains("pretty-printed with 2-space indentation (undoing"),
        "{message}"
    );
}

#[test]
fn the_json_writers_match_serde_json_and_python_styles() {
    let text = r#"{"b":[1,2.5,{"c":"é"}],"a":{},"e":[]}"#;
    let tree: json::Json = serde_json::from_str(text).unwrap();
    let write = |tree: &json::Json, style| String::from_utf8(tree.write(style).unwrap()).unwrap();
    assert_eq!(write(&tree, json::Style::COMPACT), text);
    // serde_json's own pretty printer, on a tree whose order happens to be kept by `Value`
    // only when it is sorted, so compare on the sorted tree.
    let value: Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        write(&tree.sorted(), json::Style::PRETTY_2),
        serde_json::to_string_pretty(&value).unwrap()
    );
    assert_eq!(
        write(&tree, json::Style::SPACED.ascii()),
        r#"{"b": [1, 2.5, {"c": "\u00e9"}], "a": {}, "e": []}"#
    );
}

#[test]
fn a_sender_that_signed_the_raw_timestamp_text_is_recognised() {
    let raw = format!("+{TS}");
    let mut mac = new_secret().mac();
    mac.update(format!("{ID}.{raw}.{BODY}").as_bytes());
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let (explanation, _) = run(
        &headers(ID, &raw, &signature),
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    assert_eq!(explanation.verdict.code, "invalid_signature");
    let message = finding(&explanation, DiagnosisKind::TimestampTextSigned);
    assert!(message.contains("\"+1700000000\""), "{message}");
}

#[test]
fn a_stale_delivery_reports_its_age_and_that_the_signature_is_good() {
    let signature = sign_v1(&new_secret(), ID, TS, BODY.as_bytes());
    let ts = TS.to_string();
    let (explanation, text) = run(
        &headers(ID, &ts, &signature),
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS + 400,
    );
    assert_eq!(explanation.verdict.code, "timestamp_too_old");
    let report = explanation.timestamp.as_ref().unwrap();
    assert_eq!((report.age_secs, report.tolerance_secs), (400, 300));
    assert!(!report.within_tolerance);
    assert!(text.contains(": 400 s old;"), "{text}");
    assert!(text.contains("too old"), "{text}");
    let message = finding(&explanation, DiagnosisKind::TimestampOutsideTolerance);
    assert!(
        message.contains("400 s old, beyond the 300 s tolerance"),
        "{message}"
    );
    assert!(message.contains("entry #1 matched secret #2"), "{message}");

    let (ahead, text) = run(
        &headers(ID, &ts, &signature),
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS - 301,
    );
    assert_eq!(ahead.verdict.code, "timestamp_too_new");
    assert!(text.contains("301 s in the future"), "{text}");
}

#[test]
fn v1a_entries_name_the_configured_or_published_key() {
    let signing = WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&[7; 32]));
    let other = WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&[8; 32]));
    let signature = sign_v1a(&signing, ID, TS, BODY.as_bytes());
    let ts = TS.to_string();
    let h = headers(ID, &ts, &signature);

    let configured = Keys {
        public_keys: vec![other.public_key(), signing.public_key()],
        ..Keys::default()
    };
    let (explanation, text) = run(
        &h,
        BODY.as_bytes(),
        &configured,
        None,
        &Policy::default(),
        TS,
    );
    assert_eq!(
        explanation.outcome.as_ref().map(|v| v.scheme),
        Ok(Scheme::V1a)
    );
    assert!(
        text.contains("entry #1 matched configured public key #2"),
        "{text}"
    );

    let published = PublishedKeys {
        ed25519: vec![
            *other.public_key().verifying_key(),
            *signing.public_key().verifying_key(),
        ],
        rsa: Vec::new(),
    };
    let (explanation, text) = run(
        &h,
        BODY.as_bytes(),
        &Keys::default(),
        Some(&published),
        &Policy::default(),
        TS,
    );
    assert!(explanation.accepted());
    assert!(
        text.contains("entry #1 matched published Ed25519 key #2 (x "),
        "{text}"
    );

    // Tampered, with the key published: the diagnosis still finds the newline.
    let (explanation, _) = run(
        &h,
        format!("{BODY}\n").as_bytes(),
        &Keys::default(),
        Some(&published),
        &Policy::default(),
        TS,
    );
    let message = finding(&explanation, DiagnosisKind::BodyChanged);
    assert!(message.contains("published Ed25519 key #2"), "{message}");

    // No key at all for v1a.
    let (explanation, _) = run(
        &h,
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    assert!(finding(&explanation, DiagnosisKind::NoKeys).contains("v1a"));
}

#[test]
fn a_v1a_entry_beyond_the_verifiers_bound_is_reported_as_not_tried() {
    let signing = WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&[7; 32]));
    let good = sign_v1a(&signing, ID, TS, BODY.as_bytes());
    let bad = format!("v1a,{}", STANDARD.encode([0u8; SIGNATURE_LENGTH]));
    let keys = Keys {
        public_keys: vec![signing.public_key()],
        ..Keys::default()
    };
    let ts = TS.to_string();
    for (bad_entries, accepted) in [(MAX_V1A_ENTRIES - 1, true), (MAX_V1A_ENTRIES, false)] {
        let header = format!("{} {good}", vec![bad.as_str(); bad_entries].join(" "));
        let (explanation, _) = run(
            &headers(ID, &ts, &header),
            BODY.as_bytes(),
            &keys,
            None,
            &Policy::default(),
            TS,
        );
        assert_eq!(explanation.accepted(), accepted);
        let last = explanation.entries.last().unwrap();
        assert_eq!(last.tried, accepted);
        if !accepted {
            assert!(
                last.note
                    .as_deref()
                    .unwrap()
                    .contains("first 16 v1a entries")
            );
        }
    }
}

#[test]
fn entries_that_cannot_match_say_why() {
    let good = sign_v1(&new_secret(), ID, TS, BODY.as_bytes());
    let value = good.trim_start_matches("v1,");
    let url_safe = format!("v1,{}", value.replace('+', "-").replace('/', "_"));
    let unpadded = format!("v1,{}", value.trim_end_matches('='));
    let header =
        format!("{url_safe} {unpadded}  v1,AAAA V1,{value} v2,{value} {value} v1a,{value}");
    let ts = TS.to_string();
    let (explanation, _) = run(
        &headers(ID, &ts, &header),
        BODY.as_bytes(),
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    let notes: Vec<&str> = explanation
        .entries
        .iter()
        .map(|e| e.note.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        notes.len(),
        7,
        "the double space is not an entry: {notes:?}"
    );
    // The tag happens to contain '+' or '/' only sometimes; the URL-safe note needs one.
    if value.contains(['+', '/']) {
        assert!(notes[0].contains("URL-safe"), "{}", notes[0]);
    }
    assert!(notes[1].contains("padding"), "{}", notes[1]);
    assert!(notes[2].contains("decodes to 3 bytes"), "{}", notes[2]);
    assert!(notes[3].contains("case-sensitive"), "{}", notes[3]);
    assert!(notes[4].contains("unknown version"), "{}", notes[4]);
    assert!(notes[5].contains("no ','"), "{}", notes[5]);
    assert!(notes[6].contains("decodes to 32 bytes"), "{}", notes[6]);
    assert!(explanation.entries.iter().all(|e| e.matched.is_none()));
}

#[test]
fn header_problems_are_the_verdict_and_the_diagnosis() {
    let ts = TS.to_string();
    let missing = WebhookHeaders {
        id: None,
        timestamp: Some(&ts),
        signature: Some("v1,AAAA"),
    };
    let (explanation, text) = run(
        &missing,
        b"{}",
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    assert!(
        text.starts_with("verdict: rejected: missing_header"),
        "{text}"
    );
    assert!(finding(&explanation, DiagnosisKind::HeaderProblem).contains("webhook-id"));

    let (explanation, _) = run(
        &headers(ID, "1.5e9", "v1,AAAA"),
        b"{}",
        &two_secrets(),
        None,
        &Policy::default(),
        TS,
    );
    assert_eq!(explanation.verdict.code, "invalid_header");
    assert!(explanation.timestamp.is_none());
}

#[test]
fn a_jwt_signature_is_reported_as_such() {
    let pem = include_bytes!("../../../tests/data/jwt-test-key-a.pem");
    let jwks = include_str!("../../../tests/data/jwt-test-keys.jwks.json");
    let published = parse_jwks(jwks.as_bytes()).unwrap().keys;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-a".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    let token = jsonwebtoken::encode(&header, &json!({"iat": TS}), &key).unwrap();
    let ts = TS.to_string();
    let h = headers(ID, &ts, &token);

    let (explanation, _) = run(
        &h,
        b"{}",
        &Keys::default(),
        Some(&published),
        &Policy::default(),
        TS,
    );
    assert_eq!(
        explanation.outcome.as_ref().map(|v| v.scheme),
        Ok(Scheme::Jwt)
    );
    assert!(explanation.entries.is_empty());

    let refuse = Policy {
        accept_jwt: false,
        ..Policy::default()
    };
    let (explanation, _) = run(&h, b"{}", &Keys::default(), Some(&published), &refuse, TS);
    assert!(finding(&explanation, DiagnosisKind::JwtRefused).contains("accept_jwt"));

    let (explanation, _) = run(&h, b"{}", &Keys::default(), None, &Policy::default(), TS);
    assert_eq!(explanation.verdict.code, "invalid_signature");
    assert!(finding(&explanation, DiagnosisKind::JwtRefused).contains("kid"));
}

#[test]
fn explain_agrees_with_verify_on_every_vector_and_never_shows_the_secret() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let secret = case["secret"].as_str().unwrap();
        let keys = match case["scheme"].as_str().unwrap() {
            "v1" => match WebhookSecret::parse(secret) {
                Ok(parsed) => Keys {
                    secrets: vec![parsed],
                    ..Keys::default()
                },
                // The secret is refused at configuration: nothing reaches the verifier.
                Err(_) => continue,
            },
            _ => Keys {
                public_keys: vec![PublicKey::parse(secret).unwrap()],
                ..Keys::default()
            },
        };
        let body = match (&case["payload"], &case["payload_repeat"]) {
            (Value::String(p), _) => p.clone().into_bytes(),
            (_, r) => r["char"]
                .as_str()
                .unwrap()
                .repeat(r["count"].as_u64().unwrap() as usize)
                .into_bytes(),
        };
        let h = WebhookHeaders {
            id: case["msg_id"].as_str(),
            timestamp: case["timestamp"].as_str(),
            signature: case["signature_header"].as_str(),
        };
        let now = case["now"].as_i64().unwrap();
        let policy = Policy::default();
        let explanation = explain(&h, &body, &keys, None, &policy, now);
        let verified = verify(&h, &body, &keys, None, &policy, now);
        assert_eq!(explanation.outcome, verified, "{name}");
        assert_eq!(explanation.accepted(), case["expect"] == "valid", "{name}");
        let code = verified
            .as_ref()
            .map_or_else(Rejection::code, |_| "accepted");
        assert_eq!(explanation.verdict.code, code, "{name}");
        // An accepted delivery has a matching entry; a refused one on its signature has none.
        let any_matched = explanation.entries.iter().any(|e| e.matched.is_some());
        match &verified {
            Ok(_) => assert!(any_matched, "{name}"),
            Err(Rejection::InvalidSignature) => {
                assert!(!any_matched, "{name}");
                assert!(!explanation.diagnosis.is_empty(), "{name}");
            }
            Err(_) => {}
        }
        if check_headers(&h).is_ok() {
            assert!(explanation.timestamp.is_some(), "{name}");
        }
        let text = explanation.to_string();
        let json = serde_json::to_string(&explanation).unwrap();
        if case["scheme"] == "v1" {
            let key = secret.trim_start_matches("whsec_");
            assert!(!text.contains(key) && !json.contains(key), "{name}: {text}");
        }
        checked += 1;
    }
    assert_eq!(checked, 45, "every vector but the two refused secrets");
}

#[test]
fn the_reserialised_vector_is_diagnosed_as_such() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    let case = vectors["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "A_invalid_reserialized_payload")
        .unwrap();
    let keys = Keys {
        secrets: vec![WebhookSecret::parse(case["secret"].as_str().unwrap()).unwrap()],
        ..Keys::default()
    };
    let h = WebhookHeaders {
        id: case["msg_id"].as_str(),
        timestamp: case["timestamp"].as_str(),
        signature: case["signature_header"].as_str(),
    };
    let body = case["payload"].as_str().unwrap().as_bytes();
    let explanation = explain(
        &h,
        body,
        &keys,
        None,
        &Policy::default(),
        case["now"].as_i64().unwrap(),
    );
    let message = finding(&explanation, DiagnosisKind::BodyChanged);
    assert!(
        message.contains("as Python's json.dumps does by default"),
        "{message}"
    );
}
