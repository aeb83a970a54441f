//! Writes the fuzz targets' seed corpus (`fuzz/seeds/`) from the Standard Webhooks vectors and
//! the committed test keys. Ignored, so only run on purpose:
//!
//! ```text
//! cargo test --test properties -- --ignored write_fuzz_seeds
//! ```
//!
//! Every signature here is deterministic (HMAC, Ed25519, RSA PKCS#1 v1.5), so rewriting the
//! seeds gives the same files. The vectors' megabyte payloads are left out: libFuzzer sizes its
//! inputs from the largest seed, and big inputs only slow it down.

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::json;

const VECTORS: &str = include_str!("../data/standard-webhooks-vectors.json");
const TEST_JWKS: &str = include_str!("../data/jwt-test-keys.jwks.json");
const TEST_KEY_A_PEM: &[u8] = include_bytes!("../data/jwt-test-key-a.pem");

/// A header line that is not UTF-8: the fuzz framing's "absent".
const ABSENT: &[u8] = b"\xff";

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    msg_id: Option<String>,
    timestamp: Option<String>,
    payload: Option<String>,
    signature_header: Option<String>,
    now: i64,
}

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fuzz framing of `gemhook_fuzz::Delivery`: now, id, timestamp, signature lines, body.
fn delivery(
    now: i64,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{now}\n").into_bytes();
    for header in [id, timestamp, signature] {
        out.extend_from_slice(header.map_or(ABSENT, str::as_bytes));
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

fn webhook_headers(case: &Case) -> Vec<(&'static str, &str)> {
    [
        ("webhook-id", case.msg_id.as_deref()),
        ("webhook-timestamp", case.timestamp.as_deref()),
        ("webhook-signature", case.signature_header.as_deref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| (name, value)))
    .collect()
}

/// A raw HTTP/1.1 capture, as `nc -l` saves one.
fn http_capture(headers: &[(&str, &str)], body: &[u8], chunked: bool) -> Vec<u8> {
    let mut out = b"POST /webhooks/gemini HTTP/1.1\r\nHost: localhost:8080\r\n".to_vec();
    out.extend_from_slice(b"Content-Type: application/json\r\n");
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(7) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
    } else {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
    }
    out
}

fn jwt(claims: &serde_json::Value, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY_A_PEM).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes fuzz/seeds; run on purpose"]
fn write_fuzz_seeds() {
    let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
    // Large-payload cases have no `payload` (it is given as a repeat) and are left out.
    let cases: Vec<&Case> = vectors
        .cases
        .iter()
        .filter(|c| c.payload.is_some())
        .collect();

    let deliveries = seeds_dir("delivery");
    let captures = seeds_dir("capture");
    let envelopes = seeds_dir("envelope");
    for case in &cases {
        let body = case.payload.as_deref().unwrap_or_default().as_bytes();
        write(
            &deliveries,
            &case.name,
            &delivery(
                case.now,
                case.msg_id.as_deref(),
                case.timestamp.as_deref(),
                case.signature_header.as_deref(),
                body,
            ),
        );
        let headers = webhook_headers(case);
        write(
            &captures,
            &format!("{}.http", case.name),
            &http_capture(&headers, body, false),
        );
    }
    // The vectors' bodies, once each (most cases share one).
    let mut payloads: Vec<&str> = cases.iter().filter_map(|c| c.payload.as_deref()).collect();
    payloads.sort_unstable();
    payloads.dedup();
    for (index, payload) in payloads.iter().enumerate() {
        write(
            &envelopes,
            &format!("vector_payload_{index:02}"),
            payload.as_bytes(),
        );
    }

    // The other capture shapes, and a chunked body, for a few cases.
    for case in cases
        .iter()
        .filter(|c| c.name.starts_with("A_valid") || c.name.contains("v1a"))
    {
        let body = case.payload.as_deref().unwrap_or_default();
        let headers = webhook_headers(case);
        let object: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect();
        let hand_written = json!({"headers": object, "body": body});
        write(
            &captures,
            &format!("{}.json", case.name),
            hand_written.to_string().as_bytes(),
        );
        let pairs: Vec<[&str; 2]> = headers.iter().map(|(n, v)| [*n, *v]).collect();
        let event = json!({
            "webhook_id": case.msg_id,
            "received_at": "2026-05-04T12:00:00Z",
            "headers": pairs,
            "body": body,
            "body_base64": STANDARD.encode(body),
        });
        write(
            &captures,
            &format!("{}.event.json", case.name),
            event.to_string().as_bytes(),
        );
        write(
            &captures,
            &format!("{}.chunked.http", case.name),
            &http_capture(&headers, body.as_bytes(), true),
        );
    }

    // JWT deliveries: `v1a`'s headers with a compact RS256 token instead of entries.
    let now = 1_614_265_330;
    for (name, claims, kid) in [
        ("jwt_no_claims", json!({}), "test-a"),
        (
            "jwt_times",
            json!({"iat": now, "nbf": now, "exp": now + 600}),
            "test-a",
        ),
        ("jwt_expired", json!({"exp": now - 3600}), "test-a"),
        ("jwt_unknown_kid", json!({}), "test-c"),
        ("jwt_wrong_key_for_kid", json!({}), "test-b"),
    ] {
        let token = jwt(&claims, kid);
        let seed = delivery(
            now,
            Some("msg_jwt"),
            Some(&now.to_string()),
            Some(&token),
            b"{}",
        );
        write(&deliveries, name, &seed);
    }

    // Envelopes: the published example, each known type, and the odd shapes the parser allows.
    let mut bodies = vec![
        json!({"type": "batch.succeeded", "version": "v1", "timestamp": "2026-01-22T12:00:00Z",
               "data": {"id": "batch_123456", "output_file_uri": "gs://my-bucket/results.jsonl"}}),
        json!({"type": "batch.failed", "data": {"name": "batches/123"}}),
        json!({"type": "batch.failed", "data": {"id": 123, "error_code": 3}}),
        json!({"type": "video.generated", "data": {"id": {"x": 1}, "video_uri": "files/v"}}),
        json!({"type": "model.tuned", "data": {"id": "t1"}, "extra": [1, 2]}),
        json!([1, 2]),
    ];
    for event_type in gemhook::envelope::KNOWN_TYPES {
        bodies.push(
            json!({"type": event_type, "data": {"id": "v1_ChdpZA"}, "user_metadata": {"k": "v"}}),
        );
    }
    for (index, body) in bodies.iter().enumerate() {
        write(
            &envelopes,
            &format!("envelope_{index:02}.json"),
            body.to_string().as_bytes(),
        );
    }

    // JWKS documents: the test RSA set, Ed25519 sets, and keys of every skipped kind.
    let jwks = seeds_dir("jwks");
    write(&jwks, "test_rsa.json", TEST_JWKS.as_bytes());
    let vector_x = URL_SAFE_NO_PAD.encode(
        STANDARD
            .decode("1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=")
            .unwrap(),
    );
    let documents = [
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": vector_x}]}),
        json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": vector_x, "use": "sig", "alg": "EdDSA"},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "OKP", "crv": "X25519", "x": vector_x},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": vector_x, "use": "enc"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "k", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            // A small-order point: refused as weak.
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([0u8; 32])},
            "not an object"
        ]}),
        json!({"keys": []}),
    ];
    for (index, document) in documents.iter().enumerate() {
        write(
            &jwks,
            &format!("jwks_{index:02}.json"),
            document.to_string().as_bytes(),
        );
    }
}
