//! Standard Webhooks `v1a`: an Ed25519 signature over `id.timestamp.body`, standard base64.
//!
//! This is what live dynamic Gemini deliveries carry (see "Dynamic signatures" in the shared
//! notes). Public keys come from two places: `whpk_` keys configured by the operator
//! ([`PublicKey`]) and the Ed25519 keys of Google's JWKS (`published`). The `whsk_` signing key
//! ([`WebhookSigningKey`]) exists for tests and the CLI, never for the receiver itself.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{PUBLIC_KEY_LENGTH, SECRET_KEY_LENGTH, SIGNATURE_LENGTH, Signature, Signer};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{SignedContent, signature_entries};

/// At most this many `v1a` entries of one header are tried. A sender has one key, two during a
/// rotation; the bound keeps a forged header of a thousand entries from costing a thousand
/// signature checks per key.
const MAX_V1A_ENTRIES: usize = 16;

/// Why a configured `whpk_` public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("it is empty")]
    Empty,
    #[error("it is not valid padded standard base64 after the whpk_ prefix")]
    NotBase64,
    #[error("it decodes to {0} bytes, not the 32 of an Ed25519 public key")]
    WrongLength(usize),
    #[error("the 32 bytes are not a valid Ed25519 public key")]
    NotAKey,
}

/// An Ed25519 public key in the Standard Webhooks `whpk_` format. Public, so `Debug` shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `whpk_<base64 of 32 bytes>` (or the bare base64, as for `whsec_` secrets).
    pub fn parse(text: &str) -> Result<Self, PublicKeyError> {
        let encoded = text.strip_prefix("whpk_").unwrap_or(text);
        if encoded.is_empty() {
            return Err(PublicKeyError::Empty);
        }
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| PublicKeyError::NotBase64)?;
        let bytes: [u8; PUBLIC_KEY_LENGTH] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| PublicKeyError::WrongLength(bytes.len()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| PublicKeyError::NotAKey)
    }

    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        PublicKey(key)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    /// The `whpk_` form, as an operator would configure it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "whpk_{}", STANDARD.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a `whsk_` signing key was refused. The messages never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    #[error("it is empty")]
    Empty,
    #[error("it is not valid padded standard base64 after the whsk_ prefix")]
    NotBase64,
    #[error("it decodes to {0} bytes, not the 64 of an Ed25519 seed followed by its public key")]
    WrongLength(usize),
    #[error("its second half is not the public key of its first half")]
    PublicKeyMismatch,
}

/// A Standard Webhooks `whsk_` signing key: base64 of the 32-byte seed followed by the 32-byte
/// public key. For tests and `gemhook send`: it lets us produce `v1a` deliveries like Google's.
#[derive(Clone)]
pub struct WebhookSigningKey(SigningKey);

impl WebhookSigningKey {
    /// Parses `whsk_<base64 of 64 bytes>` (or the bare base64).
    pub fn parse(text: &str) -> Result<Self, SigningKeyError> {
        let encoded = text.strip_prefix("whsk_").unwrap_or(text);
        if encoded.is_empty() {
            return Err(SigningKeyError::Empty);
        }
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SigningKeyError::NotBase64)?;
        if bytes.len() != SECRET_KEY_LENGTH + PUBLIC_KEY_LENGTH {
            return Err(SigningKeyError::WrongLength(bytes.len()));
        }
        let (seed, public) = bytes.split_at(SECRET_KEY_LENGTH);
        let seed: [u8; SECRET_KEY_LENGTH] = seed
            .try_into()
            .map_err(|_| SigningKeyError::WrongLength(bytes.len()))?;
        let key = SigningKey::from_bytes(&seed);
        // A keypair whose halves disagree would sign with one key and announce another.
        if key.verifying_key().as_bytes() != public {
            return Err(SigningKeyError::PublicKeyMismatch);
        }
        Ok(WebhookSigningKey(key))
    }

    pub fn from_signing_key(key: SigningKey) -> Self {
        WebhookSigningKey(key)
    }

    /// The `whpk_` key that verifies this key's signatures.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

impl fmt::Debug for WebhookSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSigningKey(<redacted>)")
    }
}

/// The signed bytes. Ed25519 hashes the message twice, so unlike HMAC it cannot be fed in
/// pieces: the body is copied once into a joined buffer.
fn message(content: &SignedContent<'_>) -> Vec<u8> {
    let timestamp = content.timestamp.to_string();
    let mut joined =
        Vec::with_capacity(content.id.len() + timestamp.len() + content.body.len() + 2);
    joined.extend_from_slice(content.id.as_bytes());
    joined.push(b'.');
    joined.extend_from_slice(timestamp.as_bytes());
    joined.push(b'.');
    joined.extend_from_slice(content.body);
    joined
}

/// True when any `v1a` entry is a valid signature of the content under any of the keys.
///
/// Entries are decoded with the strict padded decoder, like `v1`. Verification is
/// `verify_strict`: it refuses small-order keys and non-canonical signatures, so a signature
/// cannot be malleated into a second valid one, nor a weak key accept everything.
pub(crate) fn any_entry_matches<'k>(
    header: &str,
    content: &SignedContent<'_>,
    keys: impl Iterator<Item = &'k VerifyingKey> + Clone,
) -> bool {
    let candidates: Vec<Signature> = signature_entries(header)
        .filter(|entry| entry.version == "v1a")
        .take(MAX_V1A_ENTRIES)
        .filter_map(|entry| {
            let mut decoded = [0u8; SIGNATURE_LENGTH];
            match STANDARD.decode_slice(entry.value, &mut decoded) {
                Ok(SIGNATURE_LENGTH) => Some(Signature::from_bytes(&decoded)),
                _ => None,
            }
        })
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let message = message(content);
    candidates.iter().any(|signature| {
        keys.clone()
            .any(|key| key.verify_strict(&message, signature).is_ok())
    })
}

/// `v1a,<base64 signature>` for the content.
pub(super) fn sign(key: &WebhookSigningKey, content: &SignedContent<'_>) -> String {
    let signature = key.0.sign(&message(content));
    format!("v1a,{}", STANDARD.encode(signature.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_PUBLIC: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";
    const VECTOR_SIGNING: &str = "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";

    #[test]
    fn a_whpk_key_parses_with_or_without_its_prefix_and_prints_back() {
        let key = PublicKey::parse(VECTOR_PUBLIC).unwrap();
        let bare = PublicKey::parse(VECTOR_PUBLIC.trim_start_matches("whpk_")).unwrap();
        assert_eq!(key, bare);
        assert_eq!(key.to_string(), VECTOR_PUBLIC);
    }

    #[test]
    fn a_malformed_whpk_key_is_refused_with_a_reason() {
        assert_eq!(
            PublicKey::parse("whpk_").unwrap_err(),
            PublicKeyError::Empty
        );
        assert_eq!(
            PublicKey::parse("whpk_not base64!").unwrap_err(),
            PublicKeyError::NotBase64
        );
        // Unpadded: the strict decoder refuses it, as for whsec_ secrets.
        assert_eq!(
            PublicKey::parse("whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4").unwrap_err(),
            PublicKeyError::NotBase64
        );
        assert_eq!(
            PublicKey::parse("whpk_AAAA").unwrap_err(),
            PublicKeyError::WrongLength(3)
        );
    }

    #[test]
    fn the_whsk_key_of_the_vectors_belongs_to_their_whpk_key() {
        let signing = WebhookSigningKey::parse(VECTOR_SIGNING).unwrap();
        assert_eq!(signing.public_key().to_string(), VECTOR_PUBLIC);
        assert_eq!(format!("{signing:?}"), "WebhookSigningKey(<redacted>)");
    }

    #[test]
    fn a_whsk_key_whose_halves_disagree_is_refused() {
        let mut bytes = STANDARD
            .decode(VECTOR_SIGNING.trim_start_matches("whsk_"))
            .unwrap();
        bytes[63] ^= 1;
        let text = format!("whsk_{}", STANDARD.encode(&bytes));
        assert_eq!(
            WebhookSigningKey::parse(&text).unwrap_err(),
            SigningKeyError::PublicKeyMismatch
        );
        assert_eq!(
            WebhookSigningKey::parse("whsk_AAAA").unwrap_err(),
            SigningKeyError::WrongLength(3)
        );
    }

    #[test]
    fn only_the_first_sixteen_v1a_entries_are_tried() {
        let signing = WebhookSigningKey::parse(VECTOR_SIGNING).unwrap();
        let content = SignedContent {
            id: "msg_1",
            timestamp: 1000,
            body: b"{}",
        };
        let good = sign(&signing, &content);
        let bad = format!("v1a,{}", STANDARD.encode([0u8; SIGNATURE_LENGTH]));
        let key = *signing.public_key().verifying_key();
        let within = format!("{} {good}", vec![bad.as_str(); 15].join(" "));
        let beyond = format!("{} {good}", vec![bad.as_str(); 16].join(" "));
        assert!(any_entry_matches(&within, &content, [key].iter()));
        assert!(!any_entry_matches(&beyond, &content, [key].iter()));
    }
}
