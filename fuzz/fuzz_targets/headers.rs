//! `verify::check_headers`, `check_freshness` and the `webhook-signature` splitter on arbitrary
//! header text (input framing: `gemhook_fuzz::Delivery`; the body line is unused).

#![no_main]

use gemhook::verify::{
    MAX_WEBHOOK_ID_BYTES, Policy, WebhookHeaders, check_freshness, check_headers,
    signature_entries, wants_published_keys,
};
use gemhook_fuzz::{DOCUMENTED_CODES, Delivery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let delivery = Delivery::from_bytes(data);
    let headers = WebhookHeaders {
        id: delivery.id,
        timestamp: delivery.timestamp,
        signature: delivery.signature,
    };
    match check_headers(&headers) {
        Ok(checked) => {
            // What passes must be what the receiver relies on downstream.
            assert!(!checked.id.is_empty() && checked.id.len() <= MAX_WEBHOOK_ID_BYTES);
            assert!(!checked.id.chars().any(char::is_control));
            assert_eq!(
                delivery.timestamp.and_then(|t| t.parse().ok()),
                Some(checked.timestamp)
            );
            assert!(!checked.signature.is_empty());
            // The tolerance is a u64 from configuration: the body bytes pick one, up to u64::MAX.
            let mut tolerance = [0u8; 8];
            let n = delivery.body.len().min(8);
            tolerance[..n].copy_from_slice(&delivery.body[..n]);
            let policy = Policy {
                tolerance_secs: u64::from_le_bytes(tolerance),
                ..Policy::default()
            };
            if let Err(rejection) = check_freshness(checked.timestamp, delivery.now, &policy) {
                assert!(matches!(
                    rejection.code(),
                    "timestamp_too_old" | "timestamp_too_new"
                ));
            }
        }
        Err(rejection) => assert!(DOCUMENTED_CODES.contains(&rejection.code())),
    }
    if let Some(signature) = delivery.signature {
        for entry in signature_entries(signature) {
            // Entries are split on spaces and at their first comma.
            assert!(!entry.version.contains([' ', ',']));
            assert!(!entry.value.contains(' '));
        }
        let _ = wants_published_keys(signature, &Policy::default());
    }
});
