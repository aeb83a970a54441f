//! Full verification (`v1`, `v1a`, JWT) of an arbitrary delivery against the fixed keys of the
//! vectors (input framing: `gemhook_fuzz::Delivery`).

#![no_main]

use std::sync::LazyLock;

use gemhook::verify::{
    Keys, Policy, PublishedKeys, Scheme, WebhookHeaders, check_headers, verify, verify_checked,
};
use gemhook_fuzz::{DOCUMENTED_CODES, Delivery, vector_keys, vector_published};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<Keys> = LazyLock::new(vector_keys);
static PUBLISHED: LazyLock<PublishedKeys> = LazyLock::new(vector_published);

fuzz_target!(|data: &[u8]| {
    let delivery = Delivery::from_bytes(data);
    let headers = WebhookHeaders {
        id: delivery.id,
        timestamp: delivery.timestamp,
        signature: delivery.signature,
    };
    let policy = Policy::default();
    let outcome = verify(
        &headers,
        delivery.body,
        &KEYS,
        Some(&PUBLISHED),
        &policy,
        delivery.now,
    );
    match &outcome {
        Ok(verified) => {
            let signature = delivery.signature.unwrap_or_default();
            let has = |version| signature.split(' ').any(|e| e.starts_with(version));
            // A scheme can only verify when the header carries its kind of signature.
            match verified.scheme {
                Scheme::V1 => assert!(has("v1,")),
                Scheme::V1a => assert!(has("v1a,")),
                Scheme::Jwt => assert_eq!(signature.matches('.').count(), 2),
            }
        }
        Err(rejection) => assert!(DOCUMENTED_CODES.contains(&rejection.code())),
    }
    // The two-step form the HTTP handler uses must agree with the one-step form.
    if let Ok(checked) = check_headers(&headers) {
        let two_step = verify_checked(
            &checked,
            delivery.body,
            &KEYS,
            Some(&PUBLISHED),
            &policy,
            delivery.now,
        );
        assert_eq!(two_step, outcome);
    }
    // Without published keys only `v1` and the configured `v1a` key can verify.
    let unpublished = verify(&headers, delivery.body, &KEYS, None, &policy, delivery.now);
    if let Ok(verified) = unpublished {
        assert_ne!(verified.scheme, Scheme::Jwt);
        assert!(outcome.is_ok());
    }
});
