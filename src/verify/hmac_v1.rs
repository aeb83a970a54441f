//! Standard Webhooks `v1`: HMAC-SHA256 over `id.timestamp.body`, standard base64.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Mac;
use subtle::ConstantTimeEq;

use super::{SignedContent, WebhookSecret, signature_entries};

const TAG_BYTES: usize = 32;

fn tag(secret: &WebhookSecret, content: &SignedContent<'_>) -> [u8; TAG_BYTES] {
    let mut mac = secret.mac();
    // Fed in pieces: the body is never copied into a joined buffer.
    mac.update(content.id.as_bytes());
    mac.update(b".");
    mac.update(content.timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(content.body);
    mac.finalize().into_bytes().into()
}

/// True when any `v1` entry equals the HMAC of the content under any of the secrets.
///
/// Entries are decoded with the strict padded decoder, so a non-canonical encoding of the right
/// bytes does not match (the Rust and Go reference libraries compare encoded strings; vector
/// A_invalid_signature_noncanonical_base64). The comparison of tags is constant-time.
pub(crate) fn any_entry_matches(
    header: &str,
    content: &SignedContent<'_>,
    secrets: &[WebhookSecret],
) -> bool {
    let mut candidates: Vec<[u8; TAG_BYTES]> = Vec::new();
    for entry in signature_entries(header) {
        if entry.version != "v1" {
            continue; // unknown versions are skipped, not errors
        }
        let mut decoded = [0u8; TAG_BYTES];
        if let Ok(TAG_BYTES) = STANDARD.decode_slice(entry.value, &mut decoded) {
            candidates.push(decoded);
        }
    }
    if candidates.is_empty() {
        return false;
    }
    let mut matched = subtle::Choice::from(0);
    for secret in secrets {
        let expected = tag(secret, content);
        for candidate in &candidates {
            matched |= expected.ct_eq(candidate);
        }
    }
    matched.into()
}

/// `v1,<base64 tag>` for the content.
pub(super) fn sign(secret: &WebhookSecret, content: &SignedContent<'_>) -> String {
    format!("v1,{}", STANDARD.encode(tag(secret, content)))
}
