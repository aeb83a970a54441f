//! Why a delivery would be accepted or refused, in words an on-call engineer can act on.
//!
//! [`explain`] takes what [`verify`](crate::verify::verify) takes and reports, besides the verdict, every
//! step behind it: the headers, the timestamp against the tolerance (with the difference in
//! seconds), and each `webhook-signature` entry (its version, whether its value decodes, which
//! configured secret or key it matched). When nothing matched it looks for the usual culprits:
//! a body altered after signing (a newline, line endings, JSON re-serialised by a framework or a
//! logging proxy) and a sender that signed the timestamp's raw text.
//!
//! The verdict is [`verify`](crate::verify::verify)'s own result, so the two cannot disagree; the details
//! reuse the same per-entry checks (`hmac_v1`, `ed25519`, `jwt`) on one entry and one key at a
//! time. Like the rest of the module this is pure: no I/O, the clock is passed in.
//!
//! Secrets never appear: a [`WebhookSecret`] is held as a keyed HMAC state and is named here only
//! by its position (`secret #2`), and no computed tag is ever shown (an expected tag for chosen
//! content would be a forgery handed out).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{SIGNATURE_LENGTH, Signature, VerifyingKey};
use hmac::Mac;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::verify::{
    Keys, Policy, PublishedKeys, Rejection, SignedContent, Verified, WebhookHeaders, WebhookSecret,
    ed25519, hmac_v1, jwt, signature_entries, verify,
};

/// Length of a decoded `v1` value: an HMAC-SHA256 tag.
const V1_TAG_BYTES: usize = 32;

/// How many `v1a` entries the verifier tries (`ed25519::MAX_V1A_ENTRIES`, private there). A test
/// below checks that an entry past this bound is reported as untried and refused by `verify`.
const MAX_V1A_ENTRIES: usize = 16;

/// [`JwtReport::outcome`] of a token that verified.
const JWT_VERIFIED: &str = "verified";

/// Longest piece of header text echoed in the human-readable report; the JSON keeps it whole.
const SHOWN_CHARS: usize = 120;

/// The verdict, as the receiver would give it.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub accepted: bool,
    /// `accepted`, or the reason code the receiver answers with (`invalid_signature`, ...).
    pub code: &'static str,
    /// The scheme that verified (`v1`, `v1a`, `jwt`), when accepted.
    pub scheme: Option<&'static str>,
    pub message: String,
}

/// The three webhook headers as given.
#[derive(Debug, Clone, Serialize)]
pub struct HeadersReport {
    pub webhook_id: Option<String>,
    pub webhook_timestamp: Option<String>,
    pub webhook_signature: Option<String>,
}

/// The timestamp window check.
#[derive(Debug, Clone, Serialize)]
pub struct TimestampReport {
    /// The header parsed the way the verifier parses it.
    pub value: i64,
    /// The same instant in RFC 3339, for humans.
    pub value_utc: Option<String>,
    /// `now - value`: positive when the timestamp is in the past (its age), negative when ahead.
    pub age_secs: i128,
    /// Allowed difference in either direction.
    pub tolerance_secs: u64,
    pub within_tolerance: bool,
}

/// A configured or published key, named without revealing any secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyRef {
    /// The n-th configured `whsec_` secret (1-based, in configuration order).
    Secret { position: usize },
    /// The n-th configured `whpk_` public key (1-based).
    PublicKey { position: usize },
    /// The n-th Ed25519 key of the published set (1-based); `x` is its JWK `x` member, which is
    /// public and finds the key in the JWKS document.
    PublishedKey { position: usize, x: String },
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Secret { position } => write!(f, "secret #{position}"),
            KeyRef::PublicKey { position } => write!(f, "configured public key #{position}"),
            KeyRef::PublishedKey { position, x } => {
                write!(f, "published Ed25519 key #{position} (x {x})")
            }
        }
    }
}

/// One space-separated part of `webhook-signature`.
#[derive(Debug, Clone, Serialize)]
pub struct EntryReport {
    /// 1-based among the non-empty parts of the header.
    pub position: usize,
    /// The text before the first comma; `None` when the part has no comma (the verifier ignores it).
    pub version: Option<String>,
    /// Whether the value is strict padded base64 of the length the version needs.
    pub decodes: bool,
    /// Whether it was checked against keys (a known version that decodes, within the bounds).
    pub tried: bool,
    /// The first key it verified with, in the verifier's order.
    pub matched: Option<KeyRef>,
    /// Why it was not tried, or a hint about it.
    pub note: Option<String>,
}

/// The check of a compact JWT in `webhook-signature`.
#[derive(Debug, Clone, Serialize)]
pub struct JwtReport {
    pub accepted_by_policy: bool,
    pub published_rsa_keys: usize,
    /// `verified`, or why the token was refused.
    pub outcome: String,
}

/// The keys that were available, by count.
#[derive(Debug, Clone, Serialize)]
pub struct KeysReport {
    pub secrets: usize,
    pub public_keys: usize,
    /// `None` when no published key set was given (dynamic webhooks off, or nothing fetched).
    pub published_ed25519: Option<usize>,
    pub published_rsa: Option<usize>,
}

/// What a finding is about; stable, for scripts reading the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosisKind {
    HeaderProblem,
    TimestampOutsideTolerance,
    BodyChanged,
    TimestampTextSigned,
    NoKeys,
    NoUsableEntries,
    JwtRefused,
    NoKeyMatched,
}

/// One finding about why a delivery fails.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub kind: DiagnosisKind,
    pub message: String,
}

/// Everything [`explain`] found. `Display` renders a report for humans, verdict first;
/// `Serialize` gives the same as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    /// The clock the delivery was checked at (Unix seconds).
    pub now: i64,
    pub headers: HeadersReport,
    pub body_bytes: usize,
    /// `None` when `webhook-timestamp` is absent or not an integer.
    pub timestamp: Option<TimestampReport>,
    pub entries: Vec<EntryReport>,
    /// Present when `webhook-signature` is a compact JWT instead of entries.
    pub jwt: Option<JwtReport>,
    pub keys: KeysReport,
    /// Empty when accepted; otherwise the findings, the one behind the verdict first.
    pub diagnosis: Vec<Diagnosis>,
    /// [`verify`](crate::verify::verify)'s result, for callers that want the typed value.
    #[serde(skip)]
    pub outcome: Result<Verified, Rejection>,
}

impl Explanation {
    /// True when the receiver would accept the delivery.
    pub fn accepted(&self) -> bool {
        self.verdict.accepted
    }

    /// An explanation for a delivery refused before verification, by a check that belongs to
    /// the transport (e.g. the HTTP layer refuses a webhook header that is not visible ASCII).
    pub fn refused_before_verification(
        headers: &WebhookHeaders<'_>,
        body: &[u8],
        keys: &Keys,
        published: Option<&PublishedKeys>,
        now: i64,
        rejection: Rejection,
    ) -> Explanation {
        let diagnosis = vec![Diagnosis {
            kind: DiagnosisKind::HeaderProblem,
            message: format!("{rejection}: the receiver refuses it before checking signatures"),
        }];
        Explanation {
            verdict: verdict_of(&Err(rejection.clone())),
            now,
            headers: headers_report(headers),
            body_bytes: body.len(),
            timestamp: None,
            entries: Vec::new(),
            jwt: None,
            keys: keys_report(keys, published),
            diagnosis,
            outcome: Err(rejection),
        }
    }
}

/// Explains the verdict [`verify`](crate::verify::verify) gives for these inputs. See the module doc.
pub fn explain(
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
    policy: &Policy,
    now: i64,
) -> Explanation {
    let outcome = verify(headers, body, keys, published, policy, now);
    let timestamp = headers
        .timestamp
        .and_then(|text| text.parse::<i64>().ok())
        .map(|value| timestamp_report(value, now, policy));

    let signature = headers.signature.filter(|s| !s.is_empty());
    let is_jwt = signature.is_some_and(jwt::is_compact_jwt);
    // The signed content needs the id and a parsed timestamp; without them (a header problem,
    // already the verdict) entries are still listed and their decoding reported.
    let content = match (headers.id.filter(|id| !id.is_empty()), &timestamp) {
        (Some(id), Some(ts)) => Some(SignedContent {
            id,
            timestamp: ts.value,
            body,
        }),
        _ => None,
    };

    let entries = match signature {
        Some(header) if !is_jwt => entry_reports(header, content.as_ref(), keys, published),
        _ => Vec::new(),
    };
    let jwt = match signature {
        Some(token) if is_jwt => Some(jwt_report(token, published, policy, now)),
        _ => None,
    };

    let mut explanation = Explanation {
        verdict: verdict_of(&outcome),
        now,
        headers: headers_report(headers),
        body_bytes: body.len(),
        timestamp,
        entries,
        jwt,
        keys: keys_report(keys, published),
        diagnosis: Vec::new(),
        outcome,
    };
    if !explanation.verdict.accepted {
        explanation.diagnosis = diagnose(&explanation, headers, body, keys, published);
    }
    explanation
}

fn verdict_of(outcome: &Result<Verified, Rejection>) -> Verdict {
    match outcome {
        Ok(verified) => Verdict {
            accepted: true,
            code: "accepted",
            scheme: Some(verified.scheme.as_str()),
            message: format!("would be accepted (scheme {})", verified.scheme),
        },
        Err(rejection) => Verdict {
            accepted: false,
            code: rejection.code(),
            scheme: None,
            message: rejection.to_string(),
        },
    }
}

fn headers_report(headers: &WebhookHeaders<'_>) -> HeadersReport {
    HeadersReport {
        webhook_id: headers.id.map(str::to_owned),
        webhook_timestamp: headers.timestamp.map(str::to_owned),
        webhook_signature: headers.signature.map(str::to_owned),
    }
}

fn keys_report(keys: &Keys, published: Option<&PublishedKeys>) -> KeysReport {
    KeysReport {
        secrets: keys.secrets.len(),
        public_keys: keys.public_keys.len(),
        published_ed25519: published.map(|p| p.ed25519.len()),
        published_rsa: published.map(|p| p.rsa.len()),
    }
}

fn timestamp_report(value: i64, now: i64, policy: &Policy) -> TimestampReport {
    // i128 as in `check_freshness`: a hostile i64::MIN must not overflow.
    let age_secs = i128::from(now) - i128::from(value);
    TimestampReport {
        value,
        value_utc: chrono::DateTime::from_timestamp(value, 0).map(|t| t.to_rfc3339()),
        age_secs,
        tolerance_secs: policy.tolerance_secs,
        within_tolerance: age_secs.abs() <= i128::from(policy.tolerance_secs),
    }
}

fn entry_reports(
    header: &str,
    content: Option<&SignedContent<'_>>,
    keys: &Keys,
    published: Option<&PublishedKeys>,
) -> Vec<EntryReport> {
    let mut v1a_seen = 0;
    header
        .split(' ')
        .filter(|part| !part.is_empty())
        .enumerate()
        .map(|(index, part)| {
            let position = index + 1;
            // The same split as the verifier's, on this part alone.
            let Some(entry) = signature_entries(part).next() else {
                return EntryReport {
                    position,
                    version: None,
                    decodes: false,
                    tried: false,
                    matched: None,
                    note: Some(
                        "no ',' between version and value (expected v1,<base64>): ignored".into(),
                    ),
                };
            };
            let version = Some(entry.version.to_owned());
            let expected_len = match entry.version {
                "v1" => V1_TAG_BYTES,
                "v1a" => SIGNATURE_LENGTH,
                other => {
                    let hint =
                        if other.eq_ignore_ascii_case("v1") || other.eq_ignore_ascii_case("v1a") {
                            " (versions are case-sensitive)"
                        } else {
                            ""
                        };
                    return EntryReport {
                        position,
                        version,
                        decodes: false,
                        tried: false,
                        matched: None,
                        note: Some(format!(
                            "unknown version{hint}: ignored, the receiver knows v1 and v1a"
                        )),
                    };
                }
            };
            let beyond_bound = if entry.version == "v1a" {
                v1a_seen += 1;
                v1a_seen > MAX_V1A_ENTRIES
            } else {
                false
            };
            if let Err(problem) = decode_problem(entry.value, expected_len, entry.version) {
                return EntryReport {
                    position,
                    version,
                    decodes: false,
                    tried: false,
                    matched: None,
                    note: Some(problem),
                };
            }
            if beyond_bound {
                return EntryReport {
                    position,
                    version,
                    decodes: true,
                    tried: false,
                    matched: None,
                    note: Some(format!(
                        "not tried: the receiver tries only the first {MAX_V1A_ENTRIES} v1a entries"
                    )),
                };
            }
            let Some(content) = content else {
                return EntryReport {
                    position,
                    version,
                    decodes: true,
                    tried: false,
                    matched: None,
                    note: None,
                };
            };
            let matched = if entry.version == "v1" {
                matching_secret(part, content, &keys.secrets)
            } else {
                matching_public_key(part, content, keys, published)
            };
            EntryReport {
                position,
                version,
                decodes: true,
                tried: true,
                matched,
                note: None,
            }
        })
        .collect()
}

/// Why a value is not what the verifier's strict padded decoder takes, in words that point at
/// the usual mistake (URL-safe alphabet, stripped padding, a truncated copy).
fn decode_problem(value: &str, expected_len: usize, version: &str) -> Result<(), String> {
    use base64::DecodeError;
    let what = if version == "v1" {
        "a v1 HMAC-SHA256 tag"
    } else {
        "a v1a Ed25519 signature"
    };
    match STANDARD.decode(value) {
        Ok(bytes) if bytes.len() == expected_len => Ok(()),
        Ok(bytes) => Err(format!(
            "decodes to {} bytes, but {what} is {expected_len}",
            bytes.len()
        )),
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => {
            Err("not standard base64: '-' or '_' are the URL-safe alphabet".into())
        }
        Err(DecodeError::InvalidByte(offset, byte)) => Err(format!(
            "not standard base64: byte {byte:#04x} at offset {offset}"
        )),
        Err(DecodeError::InvalidLength(_)) | Err(DecodeError::InvalidPadding) => {
            Err("not padded standard base64 (padding missing or wrong, or truncated)".into())
        }
        Err(DecodeError::InvalidLastSymbol(_, _)) => {
            Err("not canonical base64: the last character carries non-zero unused bits".into())
        }
    }
}

/// The first secret under which this one entry verifies, with the verifier's own check.
fn matching_secret(
    entry: &str,
    content: &SignedContent<'_>,
    secrets: &[WebhookSecret],
) -> Option<KeyRef> {
    secrets
        .iter()
        .position(|secret| hmac_v1::any_entry_matches(entry, content, std::slice::from_ref(secret)))
        .map(|index| KeyRef::Secret {
            position: index + 1,
        })
}

/// The first public key under which this one entry verifies: configured keys, then published
/// ones, the order the verifier tries them in.
fn matching_public_key(
    entry: &str,
    content: &SignedContent<'_>,
    keys: &Keys,
    published: Option<&PublishedKeys>,
) -> Option<KeyRef> {
    let verifies =
        |key: &VerifyingKey| ed25519::any_entry_matches(entry, content, std::iter::once(key));
    if let Some(index) = keys
        .public_keys
        .iter()
        .position(|key| verifies(key.verifying_key()))
    {
        return Some(KeyRef::PublicKey {
            position: index + 1,
        });
    }
    let published = published.map_or(&[][..], |p| p.ed25519.as_slice());
    published
        .iter()
        .position(verifies)
        .map(|index| KeyRef::PublishedKey {
            position: index + 1,
            x: URL_SAFE_NO_PAD.encode(published[index].as_bytes()),
        })
}

fn jwt_report(
    token: &str,
    published: Option<&PublishedKeys>,
    policy: &Policy,
    now: i64,
) -> JwtReport {
    let rsa = published.map_or(&[][..], |p| p.rsa.as_slice());
    let outcome = if !policy.accept_jwt {
        "refused: JWT signatures are turned off (accept_jwt is false)".to_owned()
    } else {
        match jwt::verify(token, rsa, policy, now) {
            Ok(()) => JWT_VERIFIED.to_owned(),
            Err(failure) => failure.to_string(),
        }
    };
    JwtReport {
        accepted_by_policy: policy.accept_jwt,
        published_rsa_keys: rsa.len(),
        outcome,
    }
}

/// The findings for a refused delivery, the one behind the verdict first.
fn diagnose(
    explanation: &Explanation,
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
) -> Vec<Diagnosis> {
    let mut findings = Vec::new();
    let header_problem = matches!(
        explanation.outcome,
        Err(Rejection::MissingHeader(_) | Rejection::InvalidHeader { .. })
    );
    if header_problem {
        let hint = match &explanation.outcome {
            Err(Rejection::MissingHeader(_)) => {
                "the sender did not send it, or a proxy dropped it before the capture"
            }
            _ => "the receiver refuses it before checking signatures",
        };
        let message = explanation.verdict.message.clone();
        findings.push(Diagnosis {
            kind: DiagnosisKind::HeaderProblem,
            message: format!("{message}: {hint}"),
        });
        return findings;
    }

    let matched = explanation
        .entries
        .iter()
        .find_map(|entry| entry.matched.as_ref().map(|key| (entry.position, key)));
    if let Some(ts) = explanation
        .timestamp
        .as_ref()
        .filter(|ts| !ts.within_tolerance)
    {
        let jwt_verified = explanation
            .jwt
            .as_ref()
            .is_some_and(|report| report.outcome == JWT_VERIFIED);
        let signature_note = match matched {
            Some((position, key)) => {
                format!(" The signature is good (entry #{position} matched {key}).")
            }
            None if jwt_verified => " The JWT is good.".to_owned(),
            None => String::new(),
        };
        findings.push(Diagnosis {
            kind: DiagnosisKind::TimestampOutsideTolerance,
            message: format!(
                "the timestamp is {}, beyond the {} s tolerance: a late retry or a replay, or a \
                 clock (this machine's or the sender's) is off.{signature_note}",
                difference_in_words(ts.age_secs),
                ts.tolerance_secs
            ),
        });
    }
    if matched.is_some() {
        return findings;
    }

    if let Some(report) = &explanation.jwt {
        if report.outcome != JWT_VERIFIED {
            findings.push(Diagnosis {
                kind: DiagnosisKind::JwtRefused,
                message: format!(
                    "the JWT in webhook-signature was refused: {}",
                    report.outcome
                ),
            });
        }
        return findings;
    }

    findings.push(signature_finding(
        explanation,
        headers,
        body,
        keys,
        published,
    ));
    findings
}

/// Why no entry matched: a recognisable alteration, a missing kind of key, or the generic answer.
fn signature_finding(
    explanation: &Explanation,
    headers: &WebhookHeaders<'_>,
    body: &[u8],
    keys: &Keys,
    published: Option<&PublishedKeys>,
) -> Diagnosis {
    let usable = |version: &str| {
        explanation
            .entries
            .iter()
            .any(|e| e.decodes && e.version.as_deref() == Some(version))
    };
    let (has_v1, has_v1a) = (usable("v1"), usable("v1a"));
    let published_ed25519 = published.map_or(0, |p| p.ed25519.len());
    let has_ed25519_key = !keys.public_keys.is_empty() || published_ed25519 > 0;
    if !has_v1 && !has_v1a {
        return Diagnosis {
            kind: DiagnosisKind::NoUsableEntries,
            message: "no entry of webhook-signature is a v1 or v1a entry whose value decodes: \
                      see the notes on each entry"
                .into(),
        };
    }
    if (!has_v1 || keys.secrets.is_empty()) && (!has_v1a || !has_ed25519_key) {
        let message = match (has_v1, has_v1a) {
            (true, false) => "the entries are v1 (HMAC) but no whsec_ secret is configured",
            (false, true) => {
                "the entries are v1a (Ed25519) but no whpk_ key is configured and no published \
                 Ed25519 key is known (dynamic webhooks off, or the JWKS not fetched)"
            }
            _ => "no secret or public key is configured for the entries' versions",
        };
        return Diagnosis {
            kind: DiagnosisKind::NoKeys,
            message: message.into(),
        };
    }

    let candidates = Candidates::new(headers, keys, published);
    if let (Some(candidates), Some(ts)) = (&candidates, &explanation.timestamp) {
        let canonical = ts.value.to_string();
        for (change, signed_body) in body_alterations(body) {
            if let Some((position, key)) = candidates.signed_by(&canonical, &signed_body) {
                return Diagnosis {
                    kind: DiagnosisKind::BodyChanged,
                    message: format!(
                        "the body was changed after signing: {change} (undoing that, entry \
                         #{position} matches {key})"
                    ),
                };
            }
        }
        if let Some(raw) = headers.timestamp.filter(|raw| *raw != canonical) {
            if let Some((position, key)) = candidates.signed_by(raw, body) {
                return Diagnosis {
                    kind: DiagnosisKind::TimestampTextSigned,
                    message: format!(
                        "the sender signed the webhook-timestamp text as sent ({raw:?}), but \
                         signatures cover its canonical form ({canonical:?}) (over the raw text, \
                         entry #{position} matches {key})"
                    ),
                };
            }
        }
    }
    Diagnosis {
        kind: DiagnosisKind::NoKeyMatched,
        message: "no configured secret or key produced any of these signatures: the secret is \
                  wrong, or the id, timestamp or body differ from what was signed"
            .into(),
    }
}

fn difference_in_words(age_secs: i128) -> String {
    match age_secs {
        0 => "0 s (the same second as now)".to_owned(),
        age if age > 0 => format!("{age} s old"),
        age => format!("{} s in the future", -age),
    }
}

/// The decoded entries and the keys, for trying altered content. Separate from the per-entry
/// check above because the timestamp is tried as text here (`SignedContent` holds a number).
struct Candidates<'a> {
    id: &'a str,
    /// (entry position, tag) for every v1 entry that decodes.
    tags: Vec<(usize, [u8; V1_TAG_BYTES])>,
    /// (entry position, signature) for the v1a entries the verifier would try.
    signatures: Vec<(usize, Signature)>,
    secrets: &'a [WebhookSecret],
    /// Every Ed25519 key with its name, configured first.
    public_keys: Vec<(KeyRef, &'a VerifyingKey)>,
}

impl<'a> Candidates<'a> {
    fn new(
        headers: &WebhookHeaders<'a>,
        keys: &'a Keys,
        published: Option<&'a PublishedKeys>,
    ) -> Option<Self> {
        let id = headers.id?;
        let header = headers.signature?;
        let mut tags = Vec::new();
        let mut signatures = Vec::new();
        let parts = header.split(' ').filter(|part| !part.is_empty());
        for (index, part) in parts.enumerate() {
            let Some(entry) = signature_entries(part).next() else {
                continue;
            };
            match entry.version {
                "v1" => {
                    let mut tag = [0u8; V1_TAG_BYTES];
                    if let Ok(V1_TAG_BYTES) = STANDARD.decode_slice(entry.value, &mut tag) {
                        tags.push((index + 1, tag));
                    }
                }
                "v1a" => {
                    let mut bytes = [0u8; SIGNATURE_LENGTH];
                    if let Ok(SIGNATURE_LENGTH) = STANDARD.decode_slice(entry.value, &mut bytes) {
                        signatures.push((index + 1, Signature::from_bytes(&bytes)));
                    }
                }
                _ => {}
            }
        }
        // The bound counts v1a entries whether or not they decode; close enough for a
        // diagnosis, which only names an alteration and never decides the verdict.
        signatures.truncate(MAX_V1A_ENTRIES);
        let configured = keys
            .public_keys
            .iter()
            .enumerate()
            .map(|(i, key)| (KeyRef::PublicKey { position: i + 1 }, key.verifying_key()));
        let fetched = published
            .into_iter()
            .flat_map(|p| p.ed25519.iter())
            .enumerate()
            .map(|(i, key)| {
                (
                    KeyRef::PublishedKey {
                        position: i + 1,
                        x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
                    },
                    key,
                )
            });
        Some(Candidates {
            id,
            tags,
            signatures,
            secrets: &keys.secrets,
            public_keys: configured.chain(fetched).collect(),
        })
    }

    /// The first (entry, key) that verifies `<id>.<timestamp>.<body>`, the timestamp as given.
    fn signed_by(&self, timestamp: &str, body: &[u8]) -> Option<(usize, KeyRef)> {
        if !self.tags.is_empty() {
            for (index, secret) in self.secrets.iter().enumerate() {
                let mut mac = secret.mac();
                mac.update(self.id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                let expected: [u8; V1_TAG_BYTES] = mac.finalize().into_bytes().into();
                for (position, tag) in &self.tags {
                    if bool::from(expected.ct_eq(tag)) {
                        return Some((
                            *position,
                            KeyRef::Secret {
                                position: index + 1,
                            },
                        ));
                    }
                }
            }
        }
        if !self.signatures.is_empty() && !self.public_keys.is_empty() {
            let message = [self.id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
            for (name, key) in &self.public_keys {
                for (position, signature) in &self.signatures {
                    if key.verify_strict(&message, signature).is_ok() {
                        return Some((*position, name.clone()));
                    }
                }
            }
        }
        None
    }
}

/// Bodies that may have been signed, each with the change that would turn it into the received
/// body: the alterations proxies, frameworks, editors and copy-paste commonly make. Ordered from
/// the most specific; duplicates and the received body itself are left out.
fn body_alterations(body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut candidates: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |change: &str, signed: Vec<u8>| {
        if signed != body && !candidates.iter().any(|(_, seen)| *seen == signed) {
            candidates.push((change.to_owned(), signed));
        }
    };
    if let Some(stripped) = body.strip_suffix(b"\r\n") {
        push("a trailing CRLF was added", stripped.to_vec());
    }
    if let Some(stripped) = body.strip_suffix(b"\n") {
        push("a trailing newline was added", stripped.to_vec());
    }
    push("a trailing newline was removed", [body, b"\n"].concat());
    push("a trailing CRLF was removed", [body, b"\r\n"].concat());
    if body.windows(2).any(|w| w == b"\r\n") {
        push(
            "LF line endings were changed to CRLF",
            replace(body, b"\r\n", b"\n"),
        );
    }
    if body.contains(&b'\n') {
        let lf_only = replace(body, b"\r\n", b"\n");
        push(
            "CRLF line endings were changed to LF",
            replace(&lf_only, b"\n", b"\r\n"),
        );
    }
    if let Some(stripped) = body.strip_prefix(b"\xEF\xBB\xBF") {
        push("a UTF-8 byte-order mark was added", stripped.to_vec());
    }
    push(
        "whitespace was added at the start or end",
        body.trim_ascii().to_vec(),
    );
    for (change, signed) in json_reserialisations(body) {
        push(&change, signed);
    }
    candidates
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// The body's JSON written in the styles serialisers commonly produce, in case the received
/// body is a re-serialisation of the signed one (a framework that parses and re-encodes, a
/// logging proxy that pretty-prints).
fn json_reserialisations(body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let Ok(parsed) = serde_json::from_slice::<json::Json>(body) else {
        return Vec::new();
    };
    let sorted = parsed.sorted();
    let non_ascii = !body.is_ascii();
    let styles = [
        json::Style::COMPACT,
        json::Style::SPACED,
        json::Style::PRETTY_2,
        json::Style::PRETTY_4,
    ];
    let mut out = Vec::new();
    for (tree, order) in [(&parsed, ""), (&sorted, ", keys sorted")] {
        for style in styles {
            let mut variants = vec![(style, "")];
            if non_ascii {
                variants.push((style.ascii(), ", non-ASCII characters escaped"));
            }
            for (style, escaping) in variants {
                if let Some(text) = tree.write(style) {
                    out.push((
                        format!(
                            "the JSON was re-serialised; what was signed is the same JSON {}{order}{escaping}",
                            style.name
                        ),
                        text,
                    ));
                }
            }
        }
    }
    out
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.verdict;
        if v.accepted {
            writeln!(f, "verdict: accepted (scheme {})", v.scheme.unwrap_or("?"))?;
        } else {
            writeln!(f, "verdict: rejected: {} ({})", v.code, v.message)?;
        }
        for finding in &self.diagnosis {
            writeln!(f, "  {}", finding.message)?;
        }

        writeln!(f, "headers:")?;
        let h = &self.headers;
        for (name, value) in [
            ("webhook-id", &h.webhook_id),
            ("webhook-timestamp", &h.webhook_timestamp),
            ("webhook-signature", &h.webhook_signature),
        ] {
            match value {
                Some(text) => writeln!(f, "  {name:<18} {}", shown(text))?,
                None => writeln!(f, "  {name:<18} (absent)")?,
            }
        }
        writeln!(f, "  body               {} bytes", self.body_bytes)?;

        match &self.timestamp {
            Some(ts) => writeln!(
                f,
                "timestamp: {} ({}); now {}: {}; tolerance {} s either way: {}",
                ts.value,
                ts.value_utc.as_deref().unwrap_or("out of range"),
                self.now,
                difference_in_words(ts.age_secs),
                ts.tolerance_secs,
                if ts.within_tolerance {
                    "within"
                } else if ts.age_secs > 0 {
                    "too old"
                } else {
                    "too new"
                }
            )?,
            None => writeln!(f, "timestamp: not checked (absent or not an integer)")?,
        }

        if let Some(report) = &self.jwt {
            writeln!(
                f,
                "signature: a compact JWT; {} published RSA key(s); {}",
                report.published_rsa_keys, report.outcome
            )?;
        } else if !self.entries.is_empty() {
            writeln!(f, "signature entries:")?;
            for entry in &self.entries {
                write_entry(f, entry)?;
            }
        }

        let k = &self.keys;
        let published = match (k.published_ed25519, k.published_rsa) {
            (Some(ed), Some(rsa)) => format!("{ed} published Ed25519 and {rsa} RSA key(s)"),
            _ => "no published keys".to_owned(),
        };
        writeln!(
            f,
            "keys: {} secret(s), {} configured public key(s), {published}",
            k.secrets, k.public_keys
        )
    }
}

fn write_entry(f: &mut fmt::Formatter<'_>, entry: &EntryReport) -> fmt::Result {
    // Quoted only when odd, so that a control character or a space shows as such.
    let version = match entry.version.as_deref() {
        None => "no version".to_owned(),
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) => v.to_owned(),
        Some(v) => shown(v),
    };
    let what = match (&entry.matched, entry.tried) {
        (Some(key), _) => format!("matched {key}"),
        (None, true) => "matched no key".to_owned(),
        (None, false) => "not tried".to_owned(),
    };
    write!(f, "  entry #{} {what} ({version}", entry.position)?;
    if entry.version.is_some() && entry.note.is_none() {
        write!(f, ", value decodes")?;
    }
    write!(f, ")")?;
    if let Some(note) = &entry.note {
        write!(f, ": {note}")?;
    }
    writeln!(f)
}

/// Header text for the human report: quoted with escapes (a control character shows as such)
/// and cut to a readable length.
fn shown(text: &str) -> String {
    if text.chars().count() > SHOWN_CHARS {
        let head: String = text.chars().take(SHOWN_CHARS).collect();
        format!("{head:?}... ({} bytes)", text.len())
    } else {
        format!("{text:?}")
    }
}

mod json;

#[cfg(test)]
mod tests;
