//! Secrets in memory: shown nowhere. A leaf, so that what holds a secret (the configuration,
//! the sinks, the Gemini client, `gemhook send`) need not depend on one another to share the
//! type. One type for all of them, on the well-kept `secrecy` crate: `Debug` prints a
//! placeholder, there is no `Display` or `Serialize`, and the memory is zeroed when dropped.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

/// A string that must not be shown.
#[derive(Clone)]
pub struct Redacted(SecretString);

impl Redacted {
    pub fn new(value: impl Into<String>) -> Self {
        Redacted(SecretString::from(value.into()))
    }

    /// The secret itself, for the one place that must send or parse it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Redacted {
    fn from(value: String) -> Self {
        Redacted::new(value)
    }
}

/// Compared in constant time: equality of secrets must not leak how much of them matched.
impl PartialEq for Redacted {
    fn eq(&self, other: &Self) -> bool {
        self.expose()
            .as_bytes()
            .ct_eq(other.expose().as_bytes())
            .into()
    }
}

impl Eq for Redacted {}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Redacted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Redacted::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown_and_compares_by_value() {
        let secret = Redacted::new("whsec_sup3r-s3cret");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
        assert_eq!(secret, Redacted::from("whsec_sup3r-s3cret".to_owned()));
        assert_ne!(secret, Redacted::new("whsec_other"));
        assert_eq!(secret.expose(), "whsec_sup3r-s3cret");
    }
}
