//! Who may use the console and the admin API, and the checks on state-changing requests. Pure:
//! no I/O, the clock passed in, so every rule is unit-tested.
//!
//! - With `GEMHOOK_ADMIN_TOKEN`: the API takes `Authorization: Bearer <token>`; the pages take
//!   a session cookie set by the login form. The cookie holds an expiry and an HMAC of it under
//!   a key derived from the token, never the token: any replica with the same token accepts
//!   it, and changing the token ends every session.
//! - Without a token the console serves only on a loopback address (start-up refuses others),
//!   and every request must name a loopback host, so a page elsewhere cannot reach it through
//!   DNS rebinding.
//! - State changes made with ambient credentials (the cookie, or loopback trust) need proof
//!   that the console itself sent them: a form's CSRF token bound to the session, or, for the
//!   API, a JSON body, which a cross-site form cannot send and a cross-site script cannot send
//!   without a CORS preflight that gemhook never grants. A bearer token is not ambient: a
//!   browser never attaches it by itself.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::redact::Redacted;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gemhook_session";

/// How long a login lasts.
pub const SESSION_SECS: i64 = 12 * 3600;

/// The form field (and header, `x-csrf-token`) carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

type HmacSha256 = Hmac<Sha256>;

/// The console's credentials: the configured token, if any, and the key sessions and CSRF
/// tokens are signed with.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Redacted>,
    key: [u8; 32],
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `Authorization: Bearer` with the token.
    Bearer,
    /// The login cookie (its value binds the CSRF token).
    Session(String),
    /// No token is configured and the request names a loopback host.
    Loopback,
}

impl Principal {
    /// Whether the browser may have attached this credential by itself, so a state change
    /// needs a CSRF proof.
    pub fn is_ambient(&self) -> bool {
        !matches!(self, Principal::Bearer)
    }

    /// What the CSRF token is bound to.
    fn csrf_subject(&self) -> &str {
        match self {
            Principal::Session(cookie) => cookie,
            Principal::Bearer | Principal::Loopback => "loopback",
        }
    }
}

/// Why a request was refused, with the reason code the API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("authentication required: a bearer token, or log in")]
    Unauthenticated,
    #[error("without GEMHOOK_ADMIN_TOKEN the console answers only requests to a loopback host")]
    NotLoopbackHost,
    #[error("the request did not come from the console (CSRF check failed)")]
    Csrf,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Refused::Unauthenticated => "unauthenticated",
            Refused::NotLoopbackHost => "not_loopback_host",
            Refused::Csrf => "csrf",
        }
    }
}

/// What start-up refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminConfigError {
    #[error(
        "{setting} is {addr}, not a loopback address, and GEMHOOK_ADMIN_TOKEN is not set: anyone who can reach it could read every delivery and replay them; set a token or bind 127.0.0.1"
    )]
    OpenWithoutToken {
        setting: &'static str,
        addr: SocketAddr,
    },
    #[error("GEMHOOK_ADMIN_TOKEN is too short: use at least 16 characters")]
    ShortToken,
}

/// Shortest token accepted: a guessable token on a reachable address is no protection.
const MIN_TOKEN_CHARS: usize = 16;

impl AdminAuth {
    /// Credentials for a listener on `addr` (named `setting` in errors). Without a token the
    /// address must be loopback; `random_key` signs this process's CSRF tokens then.
    pub fn new(
        token: Option<Redacted>,
        listeners: &[(&'static str, SocketAddr)],
        random_key: [u8; 32],
    ) -> Result<AdminAuth, AdminConfigError> {
        let key = match &token {
            Some(token) => {
                if token.expose().chars().count() < MIN_TOKEN_CHARS {
                    return Err(AdminConfigError::ShortToken);
                }
                let mut mac = HmacSha256::new_from_slice(token.expose().as_bytes())
                    .expect("HMAC takes a key of any length");
                mac.update(b"gemhook console session key v1");
                mac.finalize().into_bytes().into()
            }
            None => {
                if let Some((setting, addr)) =
                    listeners.iter().find(|(_, addr)| !addr.ip().is_loopback())
                {
                    return Err(AdminConfigError::OpenWithoutToken {
                        setting,
                        addr: *addr,
                    });
                }
                random_key
            }
        };
        Ok(AdminAuth { token, key })
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `offered` is the token, compared in constant time (over digests, so the
    /// comparison does not reveal the token's length either).
    pub fn token_matches(&self, offered: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let expected = Sha256::digest(token.expose().as_bytes());
        let offered = Sha256::digest(offered.as_bytes());
        bool::from(expected.ct_eq(&offered))
    }

    /// Who sent a request, from its `Authorization` header, its session cookie and its `Host`.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        session: Option<&str>,
        host: Option<&str>,
        now_unix: i64,
    ) -> Result<Principal, Refused> {
        if !self.has_token() {
            return if host.is_some_and(is_loopback_host) {
                Ok(Principal::Loopback)
            } else {
                Err(Refused::NotLoopbackHost)
            };
        }
        if let Some(bearer) = authorization.and_then(|h| h.strip_prefix("Bearer ")) {
            return if self.token_matches(bearer.trim()) {
                Ok(Principal::Bearer)
            } else {
                Err(Refused::Unauthenticated)
            };
        }
        match session {
            Some(cookie) if self.session_is_valid(cookie, now_unix) => {
                Ok(Principal::Session(cookie.to_owned()))
            }
            _ => Err(Refused::Unauthenticated),
        }
    }

    /// A new session cookie's value, valid for [`SESSION_SECS`] from `now_unix`.
    pub fn new_session(&self, now_unix: i64) -> String {
        let expires = now_unix + SESSION_SECS;
        format!("{expires}.{}", self.sign(&format!("session:{expires}")))
    }

    fn session_is_valid(&self, cookie: &str, now_unix: i64) -> bool {
        let Some((expires, signature)) = cookie.split_once('.') else {
            return false;
        };
        let Ok(at) = expires.parse::<i64>() else {
            return false;
        };
        let expected = self.sign(&format!("session:{at}"));
        at > now_unix && bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    }

    /// The CSRF token the console's forms carry for this principal.
    pub fn csrf_token(&self, principal: &Principal) -> String {
        self.sign(&format!("csrf:{}", principal.csrf_subject()))
    }

    /// Whether a form's CSRF token is the one for this principal.
    pub fn csrf_matches(&self, principal: &Principal, offered: &str) -> bool {
        let expected = self.csrf_token(principal);
        bool::from(expected.as_bytes().ct_eq(offered.as_bytes()))
    }

    fn sign(&self, message: &str) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// A browser's `Origin` (or `Sec-Fetch-Site`) on a state-changing request must say it came from
/// this console; requests without either (scripts, older browsers' same-origin forms) pass to the
/// token checks.
pub fn same_origin(origin: Option<&str>, fetch_site: Option<&str>, host: Option<&str>) -> bool {
    if let Some(site) = fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match (origin, host) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }
        (Some(_), None) => false,
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`,
/// with any port).
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cret-admin-token-0123";
    const NOW: i64 = 1_800_000_000;

    fn loopback() -> (&'static str, SocketAddr) {
        ("admin_listen", "127.0.0.1:8081".parse().unwrap())
    }

    fn with_token() -> AdminAuth {
        AdminAuth::new(Some(Redacted::new(TOKEN)), &[loopback()], [7; 32]).unwrap()
    }

    fn without_token() -> AdminAuth {
        AdminAuth::new(None, &[loopback()], [7; 32]).unwrap()
    }

    #[test]
    fn a_public_address_without_a_token_is_refused_and_a_short_token_too() {
        let public = ("admin_listen", "0.0.0.0:8081".parse().unwrap());
        assert!(matches!(
            AdminAuth::new(None, &[loopback(), public], [0; 32]),
            Err(AdminConfigError::OpenWithoutToken { .. })
        ));
        assert_eq!(
            AdminAuth::new(Some(Redacted::new("short")), &[public], [0; 32]).unwrap_err(),
            AdminConfigError::ShortToken
        );
        assert!(AdminAuth::new(Some(Redacted::new(TOKEN)), &[public], [0; 32]).is_ok());
    }

    #[test]
    fn the_bearer_token_is_required_and_compared_exactly() {
        let auth = with_token();
        let host = Some("gemhook.internal:8081");
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {TOKEN}")), None, host, NOW),
            Ok(Principal::Bearer)
        );
        for wrong in ["Bearer nope", "Bearer s3cret-admin-token-012", "Basic x"] {
            assert_eq!(
                auth.authenticate(Some(wrong), None, host, NOW),
                Err(Refused::Unauthenticated),
                "{wrong}"
            );
        }
        assert_eq!(
            auth.authenticate(None, None, host, NOW),
            Err(Refused::Unauthenticated)
        );
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_cannot_be_forged() {
        let auth = with_token();
        let cookie = auth.new_session(NOW);
        assert!(!cookie.contains(TOKEN));
        let host = Some("h");
        assert!(matches!(
            auth.authenticate(None, Some(&cookie), host, NOW + 60),
            Ok(Principal::Session(_))
        ));
        assert_eq!(
            auth.authenticate(None, Some(&cookie), host, NOW + SESSION_SECS + 1),
            Err(Refused::Unauthenticated)
        );
        let (_, signature) = cookie.split_once('.').unwrap();
        let extended = format!("{}.{signature}", NOW + 10 * SESSION_SECS);
        assert_eq!(
            auth.authenticate(None, Some(&extended), host, NOW),
            Err(Refused::Unauthenticated)
        );
        // Another token's sessions are not this one's.
        let other = AdminAuth::new(
            Some(Redacted::new("another-token-456789")),
            &[loopback()],
            [7; 32],
        )
        .unwrap();
        assert_eq!(
            other.authenticate(None, Some(&cookie), host, NOW),
            Err(Refused::Unauthenticated)
        );
    }

    #[test]
    fn without_a_token_only_loopback_hosts_are_answered() {
        let auth = without_token();
        for host in [
            "127.0.0.1:8081",
            "localhost:8081",
            "[::1]:8081",
            "localhost",
        ] {
            assert_eq!(
                auth.authenticate(None, None, Some(host), NOW),
                Ok(Principal::Loopback),
                "{host}"
            );
        }
        for host in [
            "evil.example:8081",
            "127.0.0.1.evil.example",
            "10.0.0.1:8081",
        ] {
            assert_eq!(
                auth.authenticate(None, None, Some(host), NOW),
                Err(Refused::NotLoopbackHost),
                "{host}"
            );
        }
        assert!(!auth.token_matches(""), "no token: nothing matches");
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_session() {
        let auth = with_token();
        let one = Principal::Session(auth.new_session(NOW));
        let two = Principal::Session(auth.new_session(NOW + 1));
        let token = auth.csrf_token(&one);
        assert!(auth.csrf_matches(&one, &token));
        assert!(!auth.csrf_matches(&two, &token));
        assert!(!auth.csrf_matches(&one, ""));
        assert!(one.is_ambient() && Principal::Loopback.is_ambient());
        assert!(!Principal::Bearer.is_ambient());
    }

    #[test]
    fn a_cross_site_request_is_not_same_origin() {
        let host = Some("127.0.0.1:8081");
        assert!(same_origin(
            Some("http://127.0.0.1:8081"),
            Some("same-origin"),
            host
        ));
        assert!(same_origin(None, None, host));
        assert!(!same_origin(Some("https://evil.example"), None, host));
        assert!(!same_origin(None, Some("cross-site"), host));
        assert!(!same_origin(None, Some("same-site"), host));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let header = "a=1; gemhook_session=123.abc; b=2";
        assert_eq!(cookie(header, SESSION_COOKIE), Some("123.abc"));
        assert_eq!(cookie(header, "c"), None);
    }
}
