//! Project webhook secrets (`whsec_...`): parsing, and a `Debug` that never shows them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a configured secret was refused. The messages never contain the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("it is empty")]
    Empty,
    #[error("it is not valid padded standard base64 after the whsec_ prefix")]
    NotBase64,
}

/// A `whsec_` secret, decoded once and held as a ready-keyed HMAC-SHA256 state: verifying then
/// clones the state instead of re-deriving the key's inner and outer pads for every request.
#[derive(Clone)]
pub struct WebhookSecret {
    keyed: Hmac<Sha256>,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (or the bare base64, which Standard Webhooks also allows).
    /// The key is the base64-decoded bytes, not the string itself.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        // The strict, padded decoder: the reference libraries in Rust and Go reject an unpadded
        // secret at construction, and so do we (vector A_invalid_unpadded_secret).
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self::from_key_bytes(&key))
    }

    /// A secret from raw key bytes (e.g. freshly generated ones).
    pub fn from_key_bytes(key: &[u8]) -> Self {
        let keyed = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
        WebhookSecret { keyed }
    }

    /// A fresh HMAC state keyed with this secret.
    pub(crate) fn mac(&self) -> Hmac<Sha256> {
        self.keyed.clone()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_secret() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let shown = format!("{secret:?}");
        assert_eq!(shown, "WebhookSecret(<redacted>)");
    }

    #[test]
    fn an_empty_or_undecodable_secret_is_refused_with_a_reason() {
        assert_eq!(
            WebhookSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(WebhookSecret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(
            WebhookSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::NotBase64
        );
    }
}
