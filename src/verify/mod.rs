//! Signature and freshness verification of one delivery: headers + raw body + keys + clock in,
//! [`Verified`] or a [`Rejection`] out.
//!
//! Pure: no I/O and no clock reads (the caller passes `now`), so every case of the Standard
//! Webhooks vectors runs as a unit test and the module can be fuzzed. The order of checks follows
//! the Standard Webhooks reference library: headers, then the timestamp window, then signatures.
//! Checking the cheap timestamp first also means a replayed old request never costs an HMAC.
//!
//! Three schemes share one header (see "Dynamic signatures" in the shared notes): `v1` (HMAC,
//! static webhooks), `v1a` (Ed25519, what dynamic deliveries carry) and a compact RS256 JWT (what
//! the docs describe for dynamic webhooks). Google's published keys are fetched elsewhere
//! (`crate::jwks`) and passed in as [`PublishedKeys`].

pub(crate) mod ed25519;

pub(crate) mod hmac_v1;
pub(crate) mod jwt;
mod published;
mod secret;

pub use ed25519::{PublicKey, PublicKeyError, SigningKeyError, WebhookSigningKey};
pub use published::{JwksDocumentError, ParsedJwks, PublishedKeys, SkippedKey, parse_jwks};
pub use secret::{SecretError, WebhookSecret};

use std::fmt;

/// Longest `webhook-id` we accept. Gemini sends `msg_<uuid>`; the bound keeps an attacker from
/// filling the idempotency index with megabyte keys.
pub const MAX_WEBHOOK_ID_BYTES: usize = 256;

/// The three Standard Webhooks headers as they arrived (`None` = absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct WebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Which scheme verified a delivery; stored per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HMAC-SHA256 with a project `whsec_` secret (static webhooks).
    V1,
    /// Ed25519 with a published or configured public key (dynamic webhooks).
    V1a,
    /// An RS256 JWT checked against the JWKS (dynamic webhooks, as documented).
    Jwt,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::V1 => "v1",
            Scheme::V1a => "v1a",
            Scheme::Jwt => "jwt",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery whose signature and timestamp checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub scheme: Scheme,
    /// The `webhook-timestamp`, as a Unix time in seconds.
    pub timestamp: i64,
}

/// Why a delivery was refused. Each variant maps to one HTTP status and reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the {0} header is missing or empty")]
    MissingHeader(&'static str),
    #[error("the {header} header is malformed: {why}")]
    InvalidHeader {
        header: &'static str,
        why: &'static str,
    },
    #[error("the timestamp is {age_secs} s old, beyond the tolerance")]
    TimestampTooOld { age_secs: i128 },
    #[error("the timestamp is {ahead_secs} s in the future, beyond the tolerance")]
    TimestampTooNew { ahead_secs: i128 },
    #[error("no signature entry verified against the configured keys")]
    InvalidSignature,
}

impl Rejection {
    /// The stable reason code sent to the client and used as a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_header",
            Rejection::InvalidHeader { .. } => "invalid_header",
            Rejection::TimestampTooOld { .. } => "timestamp_too_old",
            Rejection::TimestampTooNew { .. } => "timestamp_too_new",
            Rejection::InvalidSignature => "invalid_signature",
        }
    }
}

/// The keys a delivery may be signed with.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Project `whsec_` secrets; several during a rotation.
    pub secrets: Vec<WebhookSecret>,
    /// Operator-configured `whpk_` Ed25519 keys, tried for `v1a` besides the published ones.
    pub public_keys: Vec<PublicKey>,
}

/// What verification is allowed to accept, besides the keys.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Allowed difference between `webhook-timestamp` and `now`, in both directions; also the
    /// leeway for a JWT's `exp`, `nbf` and `iat`.
    pub tolerance_secs: u64,
    /// Whether a compact RS256 JWT in `webhook-signature` is accepted. Such a token does not
    /// cover the body, so an operator may prefer to refuse it.
    pub accept_jwt: bool,
    /// When set, a JWT must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// When set, a JWT must carry this `iss`.
    pub jwt_issuer: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tolerance_secs: 300,
            accept_jwt: true,
            jwt_audience: None,
            jwt_issuer: None,
        }
    }
}

/// Header values that passed the syntactic checks.
#[derive(Debug, Clone, Copy)]
pub struct CheckedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
}

/// Checks presence and syntax of the three headers. Separate from [`verify`] so that the
/// receiver can log a validated `webhook-id` even when the signature later fails.
pub fn check_headers<'a>(headers: &WebhookHeaders<'a>) -> Result<CheckedHeaders<'a>, Rejection> {
    let id = present(headers.id, "webhook-id")?;
    let timestamp = present(headers.timestamp, "webhook-timestamp")?;
    let signature = present(headers.signature, "webhook-signature")?;
    if id.len() > MAX_WEBHOOK_ID_BYTES {
        return Err(Rejection::InvalidHeader {
            header: "webhook-id",
            why: "longer than 256 bytes",
        });
    }
    if id.chars().any(char::is_control) {
        return Err(Rejection::InvalidHeader {
            header: "webhook-id",
            why: "contains control characters",
        });
    }
    // `i64::from_str` takes an optional sign and decimal digits only, which is the tolerance
    // the reference library has ("+1614265330" verifies; "1.5" and "1e9" do not).
    let timestamp = timestamp
        .parse::<i64>()
        .map_err(|_| Rejection::InvalidHeader {
            header: "webhook-timestamp",
            why: "not an integer number of seconds",
        })?;
    Ok(CheckedHeaders {
        id,
        timestamp,
        signature,
    })
}

fn present<'a>(value: Option<&'a str>, header: &'static str) -> Result<&'a str, Rejection> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Rejection::MissingHeader(header)),
    }
}

/// Checks the timestamp window. `now` and the timestamp are Unix seconds; the boundary itself
/// (exactly `tolerance_secs` away) is accepted, as the reference library does.
pub fn check_freshness(timestamp: i64, now: i64, policy: &Policy) -> Result<(), Rejection> {
    // i128: a hostile `-9223372036854775808` must not overflow the subtraction.
    let diff = i128::from(now) - i128::from(timestamp);
    let tolerance = i128::from(policy.tolerance_secs);
    if diff > tolerance {
        Err(Rejection::TimestampTooOld { age_secs: diff })
    } else if -diff > tolerance {
        Err(Rejection::TimestampTooNew { ahead_secs: -diff })
    } else {
        Ok(())
    }
}

/// One `<version>,<value>` entry of `webhook-signature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureEntry<'a> {
    pub version: &'a str,
    pub value: &'a str,
}

/// Splits `webhook-signature` into its space-separated entries. Empty entries (a double space)
/// and entries without a comma are skipped, like unknown versions: none of them can match.
pub fn signature_entries(header: &str) -> impl Iterator<Item = SignatureEntry<'_>> {
    header.split(' ').filter_map(|entry| {
        let (version, value) = entry.split_once(',')?;
        Some(SignatureEntry { version, value })
    })
}

/// The signed content is `<id>.<timestamp>.<body>`, the timestamp in canonical decimal form
/// (so `+1614265330` is signed as `1614265330`, as senders sign it).
pub(crate) struct SignedContent<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// True when Google's published keys could verify this `webhook-signature` under `policy`: it
/// has a `v1a` entry, or it is a compact JWT and JWTs are accepted. Only then can refetching the
/// JWKS after a failure help, so [`crate::jwks::verify_refetching`] asks this before spending a
/// refetch on a delivery.
pub fn wants_published_keys(signature_header: &str, policy: &Policy) -> bool {
    (policy.accept_jwt && jwt::is_compact_jwt(signature_header))
        || signature_entries(signature_header).any(|entry| entry.version == "v1a")
}

/// Verifies a delivery end to end: headers, freshness, then any signature entry against any key.
/// `published` is Google's current key set, `None` when dynamic webhooks are off or no set has
/// been fetched yet.
pub fn verify(
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Rejection> {
    let checked = check_headers(headers)?;
    verify_checked(&checked, body, keys, published, policy, now)
}

/// [`verify`] for headers already checked with [`check_headers`].
pub fn verify_checked(
    checked: &CheckedHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Rejection> {
    check_freshness(checked.timestamp, now, policy)?;
    let verified = |scheme| {
        Ok(Verified {
            scheme,
            timestamp: checked.timestamp,
        })
    };

    // A compact JWT is the whole header, never one entry among others.
    if jwt::is_compact_jwt(checked.signature) {
        if !policy.accept_jwt {
            return Err(Rejection::InvalidSignature);
        }
        let rsa = published.map_or(&[][..], |keys| keys.rsa.as_slice());
        return match jwt::verify(checked.signature, rsa, policy, now) {
            Ok(()) => verified(Scheme::Jwt),
            Err(_) => Err(Rejection::InvalidSignature),
        };
    }

    let content = SignedContent {
        id: checked.id,
        timestamp: checked.timestamp,
        body,
    };
    // HMAC first: it is the cheaper check and static webhooks are the common case.
    if hmac_v1::any_entry_matches(checked.signature, &content, &keys.secrets) {
        return verified(Scheme::V1);
    }
    let configured = keys.public_keys.iter().map(PublicKey::verifying_key);
    let fetched = published.into_iter().flat_map(|keys| keys.ed25519.iter());
    if ed25519::any_entry_matches(checked.signature, &content, configured.chain(fetched)) {
        return verified(Scheme::V1a);
    }
    Err(Rejection::InvalidSignature)
}

/// Signs content with a `whsec_` secret the way Gemini does, returning a `v1,<base64>` entry.
/// Used by tests, by `gemhook send` and by outgoing hand-offs.
pub fn sign_v1(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    hmac_v1::sign(
        secret,
        &SignedContent {
            id,
            timestamp,
            body,
        },
    )
}

/// Signs content with a `whsk_` key the way dynamic deliveries are signed, returning a
/// `v1a,<base64>` entry. Used by tests and by `gemhook send`.
pub fn sign_v1a(key: &WebhookSigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    ed25519::sign(
        key,
        &SignedContent {
            id,
            timestamp,
            body,
        },
    )
}

#[cfg(test)]
mod dynamic_tests;
#[cfg(test)]
mod vectors;
