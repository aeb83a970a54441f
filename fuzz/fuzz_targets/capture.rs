//! `gemhook verify` on an arbitrary capture file: `capture::parse_capture`, then the
//! explanation against the vectors' keys, rendered as text and as JSON.

#![no_main]

use std::sync::LazyLock;

use gemhook::tools::capture::{explain_capture, parse_capture};
use gemhook::verify::{Keys, Policy, PublishedKeys, verify};
use gemhook_fuzz::{VECTOR_NOW, vector_keys, vector_published};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<Keys> = LazyLock::new(vector_keys);
static PUBLISHED: LazyLock<PublishedKeys> = LazyLock::new(vector_published);

fuzz_target!(|data: &[u8]| {
    let Ok(capture) = parse_capture(data) else {
        return;
    };
    // Header names are kept lower-case, as the receiver's header map has them.
    for (name, _) in &capture.headers {
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
    }
    let headers = capture.webhook_headers();
    let policy = Policy::default();
    // Once at the vectors' clock and once at receipt (`--at-receipt`), so that both stale
    // deliveries and the signature diagnosis are explored.
    let at_receipt = headers.timestamp.and_then(|t| t.parse::<i64>().ok());
    for now in std::iter::once(VECTOR_NOW).chain(at_receipt) {
        let explanation = explain_capture(&capture, &KEYS, &policy, Some(&PUBLISHED), now);
        // The verdict is the verifier's, except for headers the HTTP layer refuses first.
        let verdict = verify(
            &headers,
            &capture.body,
            &KEYS,
            Some(&PUBLISHED),
            &policy,
            now,
        );
        if explanation.outcome != verdict {
            assert_eq!(explanation.verdict.code, "invalid_header");
        }
        match &explanation.outcome {
            Ok(_) => assert!(explanation.accepted() && explanation.diagnosis.is_empty()),
            Err(rejection) => {
                assert_eq!(explanation.verdict.code, rejection.code());
                assert!(!explanation.diagnosis.is_empty());
            }
        }
        let _ = explanation.to_string();
        let _ = serde_json::to_string(&explanation);
    }
});
