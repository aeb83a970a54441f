//! Signature and freshness verification of one delivery: headers + raw body + keys + clock in,
//! [`Verified`] or a [`Rejection`] out.
//!
//! Pure: no I/O and no clock reads (the caller passes `now`), so every case of the Standard
//! Webhooks vectors runs as a unit test and the module can be fuzzed. The order of checks follows
//! the Standard Webhooks reference library: headers, then the timestamp window, then signatures.
//! Checking the cheap timestamp first also means a replayed old request never costs an HMAC.

mod hmac_v1;
mod secret;

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
}

/// What verification is allowed to accept, besides the keys.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Allowed difference between `webhook-timestamp` and `now`, in both directions.
    pub tolerance_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tolerance_secs: 300,
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

/// Verifies a delivery end to end: headers, freshness, then any signature entry against any key.
pub fn verify(
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Rejection> {
    let checked = check_headers(headers)?;
    verify_checked(&checked, body, keys, policy, now)
}

/// [`verify`] for headers already checked with [`check_headers`].
pub fn verify_checked(
    checked: &CheckedHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    policy: &Policy,
    now: i64,
) -> Result<Verified, Rejection> {
    check_freshness(checked.timestamp, now, policy)?;
    let content = SignedContent {
        id: checked.id,
        timestamp: checked.timestamp,
        body,
    };
    if hmac_v1::any_entry_matches(checked.signature, &content, &keys.secrets) {
        return Ok(Verified {
            scheme: Scheme::V1,
            timestamp: checked.timestamp,
        });
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

#[cfg(test)]
mod vectors;
