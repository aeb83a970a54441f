//! The documented dynamic scheme: `webhook-signature` holds a compact RS256 JWT whose header's
//! `kid` names a key of Google's JWKS.
//!
//! Such a token does not cover the body (no claim carrying a body hash is documented), so it
//! proves that Google minted a token, not that this body came with it: operators can turn the
//! scheme off (`Policy::accept_jwt`).
//!
//! `jsonwebtoken` checks the signature, the algorithm, the audience and the issuer. It reads the
//! system clock for `exp` and `nbf`, so those checks are switched off there and done here against
//! the `now` the caller passes, keeping this module clock-free like the rest of `verify`.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::Policy;

/// Why a token was refused. Only the tests and debug logs see the difference: the client is
/// told `invalid_signature` whatever the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtFailure {
    #[error("the JOSE header does not parse (this includes \"alg\": \"none\")")]
    MalformedHeader,
    #[error("the algorithm is not RS256")]
    Algorithm,
    #[error("the header names no kid")]
    MissingKid,
    #[error("no published RSA key has the header's kid")]
    UnknownKid,
    #[error("the signature or a claim check failed: {0}")]
    Rejected(String),
    #[error("the {0} claim is not a number")]
    MalformedClaim(&'static str),
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInTheFuture,
}

/// True when the header value is a compact JWS: exactly three non-empty base64url parts joined by
/// dots. Signature entries always contain a comma, so the two forms cannot be confused.
pub(crate) fn is_compact_jwt(header: &str) -> bool {
    let mut parts = 0;
    for part in header.split('.') {
        parts += 1;
        let base64url = part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if part.is_empty() || !base64url || parts > 3 {
            return false;
        }
    }
    parts == 3
}

/// Verifies a compact JWT against the published RSA keys at time `now` (Unix seconds).
pub(crate) fn verify(
    token: &str,
    rsa_keys: &[(String, DecodingKey)],
    policy: &Policy,
    now: i64,
) -> Result<(), JwtFailure> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtFailure::MalformedHeader)?;
    // Pinned before any key is looked at: `none`, HS* (an HMAC keyed with the public key's bytes)
    // and every other algorithm are refused here, and `Validation` pins it again below.
    if header.alg != Algorithm::RS256 {
        return Err(JwtFailure::Algorithm);
    }
    let kid = header.kid.as_deref().ok_or(JwtFailure::MissingKid)?;
    let key = rsa_keys
        .iter()
        .find_map(|(candidate, key)| (candidate == kid).then_some(key))
        .ok_or(JwtFailure::UnknownKid)?;

    let claims: serde_json::Value = jsonwebtoken::decode(token, key, &validation(policy))
        .map_err(|e| JwtFailure::Rejected(e.to_string()))?
        .claims;
    check_times(&claims, now, policy.tolerance_secs)
}

fn validation(policy: &Policy) -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    // No claim is documented, so none is required; the ones present are checked.
    validation.required_spec_claims.clear();
    // The clock-reading checks are done in `check_times` instead.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = policy.tolerance_secs;
    if let Some(audience) = &policy.jwt_audience {
        validation.set_audience(&[audience]);
        validation.required_spec_claims.insert("aud".to_owned());
    } else {
        // Otherwise jsonwebtoken refuses any token that carries an `aud` at all.
        validation.validate_aud = false;
    }
    if let Some(issuer) = &policy.jwt_issuer {
        validation.set_issuer(&[issuer]);
        // jsonwebtoken checks `iss` only when present; a configured issuer must be there.
        validation.required_spec_claims.insert("iss".to_owned());
    }
    validation
}

/// `exp`, `nbf` and `iat`, each only when present, with the timestamp tolerance as leeway.
fn check_times(
    claims: &serde_json::Value,
    now: i64,
    tolerance_secs: u64,
) -> Result<(), JwtFailure> {
    // i128 so that neither hostile claims nor a huge tolerance overflow.
    let now = i128::from(now);
    let leeway = i128::from(tolerance_secs);
    if let Some(exp) = numeric_claim(claims, "exp")? {
        if exp + leeway < now {
            return Err(JwtFailure::Expired);
        }
    }
    if let Some(nbf) = numeric_claim(claims, "nbf")? {
        if nbf > now + leeway {
            return Err(JwtFailure::NotYetValid);
        }
    }
    if let Some(iat) = numeric_claim(claims, "iat")? {
        if iat > now + leeway {
            return Err(JwtFailure::IssuedInTheFuture);
        }
    }
    Ok(())
}

/// A NumericDate claim in whole seconds. RFC 7519 allows fractions; they are cut off, which errs
/// by less than a second against the tolerance.
fn numeric_claim(
    claims: &serde_json::Value,
    name: &'static str,
) -> Result<Option<i128>, JwtFailure> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    if let Some(seconds) = value.as_i64() {
        return Ok(Some(i128::from(seconds)));
    }
    match value.as_f64() {
        // `as` saturates, so a float beyond i64 becomes a far past or far future, as it should.
        Some(seconds) if seconds.is_finite() => Ok(Some(i128::from(seconds as i64))),
        _ => Err(JwtFailure::MalformedClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::verify::published::{PublishedKeys, parse_jwks};

    const KEY_A: &[u8] = include_bytes!("../../tests/data/jwt-test-key-a.pem");
    const KEY_B: &[u8] = include_bytes!("../../tests/data/jwt-test-key-b.pem");
    const TEST_JWKS: &str = include_str!("../../tests/data/jwt-test-keys.jwks.json");
    const NOW: i64 = 1_700_000_000;

    /// The committed test JWKS: `test-a` and `test-b`, public halves of KEY_A and KEY_B.
    fn published() -> PublishedKeys {
        parse_jwks(TEST_JWKS.as_bytes()).unwrap().keys
    }

    fn sign(claims: &serde_json::Value, kid: &str, pem: &[u8]) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
    }

    fn check(token: &str) -> Result<(), JwtFailure> {
        verify(token, &published().rsa, &Policy::default(), NOW)
    }

    /// A token assembled by hand, for algorithms an honest library will not produce.
    fn forge(header: &serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn a_token_signed_by_the_key_its_kid_names_verifies() {
        let token = sign(&json!({"iat": NOW, "exp": NOW + 600}), "test-b", KEY_B);
        assert_eq!(check(&token), Ok(()));
    }

    #[test]
    fn a_token_without_any_claim_verifies_as_none_are_documented() {
        let token = sign(&json!({}), "test-a", KEY_A);
        assert_eq!(check(&token), Ok(()));
    }

    #[test]
    fn an_expired_token_is_refused_after_the_tolerance() {
        let within = sign(&json!({"exp": NOW - 300}), "test-a", KEY_A);
        let beyond = sign(&json!({"exp": NOW - 301}), "test-a", KEY_A);
        assert_eq!(check(&within), Ok(()));
        assert_eq!(check(&beyond), Err(JwtFailure::Expired));
    }

    #[test]
    fn a_token_not_yet_valid_or_issued_in_the_future_is_refused() {
        let nbf = sign(&json!({"nbf": NOW + 301}), "test-a", KEY_A);
        let iat = sign(&json!({"iat": NOW + 301}), "test-a", KEY_A);
        assert_eq!(check(&nbf), Err(JwtFailure::NotYetValid));
        assert_eq!(check(&iat), Err(JwtFailure::IssuedInTheFuture));
    }

    #[test]
    fn a_non_numeric_time_claim_is_refused() {
        let token = sign(&json!({"exp": "tomorrow"}), "test-a", KEY_A);
        assert_eq!(check(&token), Err(JwtFailure::MalformedClaim("exp")));
    }

    #[test]
    fn a_token_signed_by_another_key_under_the_right_kid_is_refused() {
        let token = sign(&json!({}), "test-a", KEY_B);
        assert!(matches!(check(&token), Err(JwtFailure::Rejected(_))));
    }

    #[test]
    fn a_token_with_an_unknown_or_missing_kid_is_refused() {
        let unknown = sign(&json!({}), "test-c", KEY_A);
        assert_eq!(check(&unknown), Err(JwtFailure::UnknownKid));
        let header = Header::new(Algorithm::RS256);
        let missing = jsonwebtoken::encode(
            &header,
            &json!({}),
            &EncodingKey::from_rsa_pem(KEY_A).unwrap(),
        )
        .unwrap();
        assert_eq!(check(&missing), Err(JwtFailure::MissingKid));
    }

    #[test]
    fn alg_none_is_refused() {
        let token = forge(&json!({"alg": "none", "kid": "test-a"}), &json!({}), b"");
        // `none` has an empty signature part, so it is not even a compact JWT by our definition;
        // with a dummy signature part it still fails at the header.
        assert!(!is_compact_jwt(&token));
        let token = forge(&json!({"alg": "none", "kid": "test-a"}), &json!({}), b"x");
        assert_eq!(check(&token), Err(JwtFailure::MalformedHeader));
    }

    #[test]
    fn hs256_keyed_with_the_public_key_bytes_is_refused() {
        // The classic confusion: sign with HMAC, using the bytes a verifier treats as public.
        let jwks: serde_json::Value = serde_json::from_str(TEST_JWKS).unwrap();
        let n = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["n"].as_str().unwrap())
            .unwrap();
        let jwk = jwks["keys"][0].to_string();
        for public_bytes in [&n[..], jwk.as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("test-a".to_owned());
            let token =
                jsonwebtoken::encode(&header, &json!({}), &EncodingKey::from_secret(public_bytes))
                    .unwrap();
            assert_eq!(check(&token), Err(JwtFailure::Algorithm));
        }
    }

    #[test]
    fn other_rsa_algorithms_are_refused_even_with_the_right_key() {
        let mut header = Header::new(Algorithm::RS512);
        header.kid = Some("test-a".to_owned());
        let token = jsonwebtoken::encode(
            &header,
            &json!({}),
            &EncodingKey::from_rsa_pem(KEY_A).unwrap(),
        )
        .unwrap();
        assert_eq!(check(&token), Err(JwtFailure::Algorithm));
    }

    #[test]
    fn audience_and_issuer_are_checked_only_when_configured() {
        let policy = Policy {
            jwt_audience: Some("gemhook".to_owned()),
            jwt_issuer: Some("https://accounts.google.com".to_owned()),
            ..Policy::default()
        };
        let keys = published().rsa;
        let good = sign(
            &json!({"aud": "gemhook", "iss": "https://accounts.google.com"}),
            "test-a",
            KEY_A,
        );
        let wrong_aud = sign(
            &json!({"aud": "other", "iss": "https://accounts.google.com"}),
            "test-a",
            KEY_A,
        );
        let no_iss = sign(&json!({"aud": "gemhook"}), "test-a", KEY_A);
        assert_eq!(verify(&good, &keys, &policy, NOW), Ok(()));
        assert!(verify(&wrong_aud, &keys, &policy, NOW).is_err());
        assert!(verify(&no_iss, &keys, &policy, NOW).is_err());
        // Unconfigured, a token that carries an audience is not refused for it.
        assert_eq!(check(&wrong_aud), Ok(()));
    }

    #[test]
    fn only_three_non_empty_base64url_parts_make_a_compact_jwt() {
        assert!(is_compact_jwt("aGVhZA.Ym9keQ.c2ln-_"));
        for not in [
            "a.b",
            "a.b.c.d",
            "a..c",
            ".b.c",
            "a.b.",
            "v1,abc.def.ghi",
            "a.b.c d",
            "a.b.c=",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "",
        ] {
            assert!(!is_compact_jwt(not), "{not}");
        }
    }
}
