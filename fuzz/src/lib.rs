//! What the fuzz targets share: the framing that turns fuzz bytes into a delivery, and the fixed
//! keys of the Standard Webhooks vectors (`tests/data/standard-webhooks-vectors.json`).
//!
//! The framing is plain text on purpose, so that a seed or a crash file can be read and written
//! by hand: see [`Delivery::from_bytes`].

use gemhook::verify::{Keys, PublicKey, PublishedKeys, WebhookSecret, parse_jwks};

/// The clock of most vector cases, used when an input gives none that parses.
pub const VECTOR_NOW: i64 = 1_614_265_330;

/// The `whsec_` secrets of the vectors' valid `v1` cases.
pub const VECTOR_SECRETS: [&str; 2] = [
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
];

/// The `whpk_` key of the vectors' `v1a` cases.
pub const VECTOR_PUBLIC_KEY: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";

/// The committed test JWKS: RSA keys `test-a` and `test-b`, for the JWT scheme.
pub const TEST_JWKS: &[u8] = include_bytes!("../../tests/data/jwt-test-keys.jwks.json");

/// One delivery, read from fuzz bytes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The verifier's clock (Unix seconds).
    pub now: i64,
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

impl<'a> Delivery<'a> {
    /// Four lines and a body: `now`, `webhook-id`, `webhook-timestamp`, `webhook-signature`, then
    /// everything after the fourth `\n` is the body, byte for byte.
    ///
    /// A header line that is not UTF-8 (a lone `\xff`, say) stands for an absent header; an
    /// input with fewer lines has the later headers absent and an empty body. A `now` line that
    /// is not an integer means "at receipt": the timestamp header's own value when it parses,
    /// so that most inputs get past the freshness check to the signatures.
    pub fn from_bytes(data: &'a [u8]) -> Self {
        let mut rest = data;
        let mut line = || -> Option<&'a [u8]> {
            if rest.is_empty() {
                return None;
            }
            let (line, after) = match rest.iter().position(|b| *b == b'\n') {
                Some(end) => (&rest[..end], &rest[end + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = after;
            Some(line)
        };
        let text = |line: Option<&'a [u8]>| line.and_then(|l| std::str::from_utf8(l).ok());
        let now = text(line());
        let id = text(line());
        let timestamp = text(line());
        let signature = text(line());
        let now = now
            .and_then(|n| n.parse().ok())
            .or_else(|| timestamp.and_then(|t| t.parse().ok()))
            .unwrap_or(VECTOR_NOW);
        Delivery {
            now,
            id,
            timestamp,
            signature,
            body: rest,
        }
    }
}

/// The configured keys: both vector secrets and the vector public key.
pub fn vector_keys() -> Keys {
    Keys {
        secrets: VECTOR_SECRETS
            .iter()
            .map(|s| WebhookSecret::parse(s).expect("a vector secret parses"))
            .collect(),
        public_keys: vec![PublicKey::parse(VECTOR_PUBLIC_KEY).expect("the vector key parses")],
    }
}

/// Google's keys as the verifier would hold them: the test JWKS's RSA keys, plus the vector's
/// Ed25519 key as a published one (so both the configured and the published path verify `v1a`).
pub fn vector_published() -> PublishedKeys {
    let mut published = parse_jwks(TEST_JWKS).expect("the test JWKS parses").keys;
    let key = PublicKey::parse(VECTOR_PUBLIC_KEY).expect("the vector key parses");
    published.ed25519.push(*key.verifying_key());
    published
}

/// The reason codes of README.md's status table that `Rejection::code` may give.
pub const DOCUMENTED_CODES: [&str; 5] = [
    "missing_header",
    "invalid_header",
    "timestamp_too_old",
    "timestamp_too_new",
    "invalid_signature",
];

/// The private half of `test-a` in [`TEST_JWKS`].
pub const TEST_KEY_A_PEM: &[u8] = include_bytes!("../../tests/data/jwt-test-key-a.pem");

/// A compact RS256 JWT over `claims` with header `kid`, signed by [`TEST_KEY_A_PEM`].
pub fn jwt(claims: &serde_json::Value, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(TEST_KEY_A_PEM).expect("the test key parses");
    jsonwebtoken::encode(&header, claims, &key).expect("RS256 signing does not fail")
}
