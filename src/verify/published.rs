//! Google's published keys: a JWKS document (bytes in) read into the keys the verifier can use.
//!
//! Pure, so the fetching and caching (`crate::jwks`) stays apart from what a document means.
//! Tolerant per key, strict per document: a key of another kind, or a malformed one, is skipped
//! (and reported, so the caller can debug-log it), because one odd key must not cost us the
//! others; a document that is not a JWKS at all is an error, so that a cache keeps its last good
//! set instead of installing nothing.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ed25519_dalek::{PUBLIC_KEY_LENGTH, VerifyingKey};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;

/// Smallest and largest RSA modulus we take, in bytes. Below 2048 bits a key is breakable (and
/// `ring` would refuse it at every verification anyway); above 8192 bits a key only costs time.
const MIN_RSA_MODULUS_BYTES: usize = 256;
const MAX_RSA_MODULUS_BYTES: usize = 1024;

/// Why a whole document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksDocumentError {
    #[error("the document is not a JSON object with a \"keys\" array")]
    NotAJwks(#[source] serde_json::Error),
}

/// The keys of one JWKS document that gemhook can verify with.
#[derive(Clone, Default)]
pub struct PublishedKeys {
    /// Every Ed25519 key: no key hint is known to be sent with `v1a`, so all are tried.
    pub ed25519: Vec<VerifyingKey>,
    /// RSA keys by `kid`, for RS256 JWTs whose header names the key.
    pub rsa: Vec<(String, DecodingKey)>,
}

impl PublishedKeys {
    /// No usable key at all.
    pub fn is_empty(&self) -> bool {
        self.ed25519.is_empty() && self.rsa.is_empty()
    }
}

impl fmt::Debug for PublishedKeys {
    // `DecodingKey` has no `Debug`; the kids and counts are what a log reader needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.rsa.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("PublishedKeys")
            .field("ed25519", &self.ed25519.len())
            .field("rsa_kids", &kids)
            .finish()
    }
}

/// A key of the document that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the document's `keys` array.
    pub index: usize,
    /// The key's `kty`, if it had a string one (cut to 32 characters: it is remote input).
    pub kty: Option<String>,
    pub why: &'static str,
}

/// A parsed document: the usable keys and the skipped ones.
#[derive(Debug, Clone)]
pub struct ParsedJwks {
    pub keys: PublishedKeys,
    pub skipped: Vec<SkippedKey>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The members of a JWK that matter here; all optional so that one odd key fails alone.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    x: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

enum Key {
    Ed25519(VerifyingKey),
    Rsa(String, DecodingKey),
}

/// Reads a JWKS document. See the module doc for what is skipped and what is an error.
pub fn parse_jwks(document: &[u8]) -> Result<ParsedJwks, JwksDocumentError> {
    let document: Document =
        serde_json::from_slice(document).map_err(JwksDocumentError::NotAJwks)?;
    let mut keys = PublishedKeys::default();
    let mut skipped = Vec::new();
    for (index, value) in document.keys.into_iter().enumerate() {
        let kty = value
            .get("kty")
            .and_then(serde_json::Value::as_str)
            .map(|kty| kty.chars().take(32).collect());
        match read_key(value) {
            Ok(Key::Ed25519(key)) => keys.ed25519.push(key),
            Ok(Key::Rsa(kid, key)) => keys.rsa.push((kid, key)),
            Err(why) => skipped.push(SkippedKey { index, kty, why }),
        }
    }
    Ok(ParsedJwks { keys, skipped })
}

fn read_key(value: serde_json::Value) -> Result<Key, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a JSON object of strings")?;
    // A key meant for encryption is not a signing key, whatever its type.
    if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
        return Err("\"use\" is not \"sig\"");
    }
    match (jwk.kty.as_deref(), jwk.crv.as_deref()) {
        (Some("OKP"), Some("Ed25519")) => read_ed25519(&jwk),
        (Some("OKP"), _) => Err("an OKP curve other than Ed25519"),
        (Some("RSA"), _) => read_rsa(jwk),
        (Some(_), _) => Err("a key type other than OKP (Ed25519) or RSA"),
        (None, _) => Err("no \"kty\""),
    }
}

fn read_ed25519(jwk: &Jwk) -> Result<Key, &'static str> {
    if jwk
        .alg
        .as_deref()
        .is_some_and(|alg| alg != "EdDSA" && alg != "Ed25519")
    {
        return Err("an Ed25519 key announced for another algorithm");
    }
    let x = jwk.x.as_deref().ok_or("no \"x\"")?;
    let bytes = base64url(x).ok_or("\"x\" is not base64url")?;
    let bytes: [u8; PUBLIC_KEY_LENGTH] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| "\"x\" is not 32 bytes")?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "\"x\" is not an Ed25519 point")?;
    // `verify_strict` would refuse it at every delivery; better to say so once, here.
    if key.is_weak() {
        return Err("\"x\" is a small-order (weak) key");
    }
    Ok(Key::Ed25519(key))
}

fn read_rsa(jwk: Jwk) -> Result<Key, &'static str> {
    // Only RS256 is accepted, so a key pinned to another algorithm is of no use (and using it
    // for RS256 anyway would be the algorithm confusion that pinning exists to prevent).
    if jwk.alg.as_deref().is_some_and(|alg| alg != "RS256") {
        return Err("an RSA key announced for an algorithm other than RS256");
    }
    // The JWT path picks its key by `kid`; a key without one can never be chosen.
    let kid = jwk.kid.filter(|kid| !kid.is_empty()).ok_or("no \"kid\"")?;
    let n = base64url(jwk.n.as_deref().ok_or("no \"n\"")?).ok_or("\"n\" is not base64url")?;
    let e = base64url(jwk.e.as_deref().ok_or("no \"e\"")?).ok_or("\"e\" is not base64url")?;
    let significant = n.iter().skip_while(|byte| **byte == 0).count();
    if !(MIN_RSA_MODULUS_BYTES..=MAX_RSA_MODULUS_BYTES).contains(&significant) {
        return Err("\"n\" is not a 2048- to 8192-bit modulus");
    }
    if e.is_empty() || e.len() > 8 {
        return Err("\"e\" is not a plausible public exponent");
    }
    Ok(Key::Rsa(kid, DecodingKey::from_rsa_raw_components(&n, &e)))
}

/// RFC 7517 says unpadded base64url; a padded one is harmless, so it is taken too.
fn base64url(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_RSA_JWKS: &str = include_str!("../../tests/data/jwt-test-keys.jwks.json");

    fn ed25519_x(seed: u8) -> String {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    }

    #[test]
    fn ed25519_and_rsa_keys_are_read_and_other_kinds_are_skipped() {
        let test_rsa: serde_json::Value = serde_json::from_str(TEST_RSA_JWKS).unwrap();
        let rsa = &test_rsa["keys"][0];
        let document = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": ed25519_x(1)},
            {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "OKP", "crv": "X25519", "x": ed25519_x(2)},
            rsa,
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed25519_x(3), "use": "sig", "alg": "EdDSA"},
        ]});

        let parsed = parse_jwks(document.to_string().as_bytes()).unwrap();

        assert_eq!(parsed.keys.ed25519.len(), 2);
        assert_eq!(parsed.keys.rsa.len(), 1);
        assert_eq!(parsed.keys.rsa[0].0, "test-a");
        let skipped: Vec<(usize, Option<&str>)> = parsed
            .skipped
            .iter()
            .map(|s| (s.index, s.kty.as_deref()))
            .collect();
        assert_eq!(
            skipped,
            [(1, Some("EC")), (2, Some("OKP")), (4, Some("oct"))]
        );
    }

    #[test]
    fn malformed_keys_are_skipped_one_by_one() {
        let document = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519"},
            {"kty": "OKP", "crv": "Ed25519", "x": "not base64url!"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed25519_x(1), "use": "enc"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "short"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "k", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
            {"crv": "Ed25519", "x": ed25519_x(1)},
            "a string, not an object",
            {"kty": "OKP", "crv": "Ed25519", "x": ed25519_x(4)},
        ]});

        let parsed = parse_jwks(document.to_string().as_bytes()).unwrap();

        assert_eq!(parsed.keys.ed25519.len(), 1);
        assert!(parsed.keys.rsa.is_empty());
        assert_eq!(parsed.skipped.len(), 9);
    }

    #[test]
    fn a_document_that_is_not_a_jwks_is_an_error() {
        for document in [
            &b"<html>502</html>"[..],
            b"{}",
            b"[]",
            b"{\"keys\": 3}",
            b"",
        ] {
            assert!(
                parse_jwks(document).is_err(),
                "{}",
                String::from_utf8_lossy(document)
            );
        }
    }

    #[test]
    fn an_empty_key_set_is_a_jwks_with_no_usable_key() {
        let parsed = parse_jwks(br#"{"keys": []}"#).unwrap();
        assert!(parsed.keys.is_empty());
        assert!(parsed.skipped.is_empty());
    }
}
