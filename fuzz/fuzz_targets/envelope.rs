//! `envelope::parse` on an arbitrary (already verified) body: it must always file it.

#![no_main]

use gemhook::envelope::{EventStatus, KNOWN_TYPES, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let envelope = parse(data);
    match envelope.status {
        EventStatus::Unparseable => assert!(envelope.event_type.is_none()),
        EventStatus::Accepted => {
            assert!(KNOWN_TYPES.contains(&envelope.event_type.as_deref().unwrap_or_default()))
        }
        EventStatus::Ignored => {
            let event_type = envelope.event_type.as_deref().unwrap_or_default();
            assert!(!event_type.is_empty() && !KNOWN_TYPES.contains(&event_type));
        }
    }
    // A resource id is only ever read from a typed envelope, and never empty.
    if let Some(id) = &envelope.resource_id {
        assert!(envelope.status != EventStatus::Unparseable && !id.is_empty());
    }
});
