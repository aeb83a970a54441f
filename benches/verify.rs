//! Micro-benchmarks of the ack path's CPU work: signature verification (`v1` HMAC and `v1a`
//! Ed25519) and envelope parsing, on a 1 KiB body. Run: `cargo bench --bench verify`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use gemhook::envelope;
use gemhook::verify::{
    Keys, Policy, WebhookHeaders, WebhookSecret, WebhookSigningKey, sign_v1, sign_v1a, verify,
};

const ID: &str = "msg_2b7c9f0e8d7a4c1b9e6f5a4d3c2b1a09";
const NOW: i64 = 1_763_900_000;

/// A realistic batch.succeeded envelope padded to exactly 1 KiB.
fn body_1kib() -> Vec<u8> {
    let head = r#"{"type":"batch.succeeded","version":"v1","timestamp":"2026-11-23T12:00:00Z","data":{"id":"batches/123456","output_file_uri":"files/abc123","user_metadata":{"pad":""#;
    let tail = r#""}}}"#;
    let pad = 1024 - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

fn benches(c: &mut Criterion) {
    let body = body_1kib();
    assert_eq!(body.len(), 1024);
    let timestamp = NOW.to_string();
    let policy = Policy::default();

    let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let v1 = sign_v1(&secret, ID, NOW, &body);
    let hmac_keys = Keys {
        secrets: vec![secret],
        ..Keys::default()
    };

    let signing = WebhookSigningKey::from_signing_key(SigningKey::from_bytes(&[7; 32]));
    let v1a = sign_v1a(&signing, ID, NOW, &body);
    let ed_keys = Keys {
        public_keys: vec![signing.public_key()],
        ..Keys::default()
    };

    let mut group = c.benchmark_group("verify_1kib");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("v1_hmac_sha256", |b| {
        let headers = WebhookHeaders {
            id: Some(ID),
            timestamp: Some(&timestamp),
            signature: Some(&v1),
        };
        b.iter(|| verify(&headers, &body, &hmac_keys, None, &policy, NOW).unwrap())
    });
    group.bench_function("v1a_ed25519", |b| {
        let headers = WebhookHeaders {
            id: Some(ID),
            timestamp: Some(&timestamp),
            signature: Some(&v1a),
        };
        b.iter(|| verify(&headers, &body, &ed_keys, None, &policy, NOW).unwrap())
    });
    group.finish();

    c.bench_function("envelope_parse_1kib", |b| {
        b.iter(|| envelope::parse(std::hint::black_box(&body)))
    });
}

criterion_group!(verification, benches);
criterion_main!(verification);
