//! Which origins may receive the Gemini API key.
//!
//! Pure. The key goes to the base URL's origin and to the origins the operator lists in
//! `GEMHOOK_ALLOWED_HOSTS`, nowhere else. We compare whole *origins* (scheme, host and port),
//! not host names alone:
//! - the port: two services on one host are two parties (a test's stand-in for Gemini and its
//!   "foreign" server are both on 127.0.0.1; in production a debug port or a sidecar may share
//!   a name with the real service), and the key is meant for one of them only;
//! - the scheme: `http://` to an `https://` host would put the key on the wire in clear.
//!
//! An allowed-host entry without a scheme means `https://` on its default port (`host` or
//! `host:port`); write `http://host:port` to allow plain HTTP, which only tests should need.

use url::{Origin, Url};

/// A configuration that cannot be used; reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the Gemini base URL is not a valid http(s) URL: {reason}")]
    InvalidBaseUrl { reason: String },
    #[error("allowed host {entry:?} is not a host, host:port or http(s) URL")]
    InvalidAllowedHost { entry: String },
    #[error("building the HTTP client failed")]
    HttpClient(#[source] reqwest::Error),
}

/// The origins that may receive the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins {
    base: Origin,
    extra: Vec<Origin>,
}

impl AllowedOrigins {
    /// `base` is the Gemini base URL; `extra_hosts` the operator's `GEMHOOK_ALLOWED_HOSTS`.
    pub fn new(base: &Url, extra_hosts: &[String]) -> Result<AllowedOrigins, ConfigError> {
        let base_origin = http_origin(base).ok_or_else(|| ConfigError::InvalidBaseUrl {
            reason: "the scheme must be http or https, with a host and no credentials".into(),
        })?;
        let extra = extra_hosts
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .map(parse_allowed_host)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowedOrigins {
            base: base_origin,
            extra,
        })
    }

    /// The base URL's origin.
    pub fn base(&self) -> &Origin {
        &self.base
    }

    /// Whether `url` is on the base origin.
    pub fn is_base(&self, url: &Url) -> bool {
        http_origin(url).is_some_and(|origin| origin == self.base)
    }

    /// Whether the API key may be sent to `url`.
    pub fn allows(&self, url: &Url) -> bool {
        http_origin(url).is_some_and(|origin| origin == self.base || self.extra.contains(&origin))
    }
}

/// `scheme://host:port` of a URL, for messages: never its path or query, which may carry
/// signed tokens.
pub fn display_origin(url: &Url) -> String {
    match url.origin() {
        origin @ Origin::Tuple(..) => origin.ascii_serialization(),
        Origin::Opaque(_) => format!("{}:", url.scheme()),
    }
}

/// The origin of an http(s) URL with a host and no user info; `None` for anything else, so
/// that such a URL is never allowed. (User info would make reqwest send basic auth to it.)
fn http_origin(url: &Url) -> Option<Origin> {
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none();
    plain.then(|| url.origin())
}

/// One `GEMHOOK_ALLOWED_HOSTS` entry: `host`, `host:port`, or an `http(s)://` URL (only its
/// origin counts).
pub fn parse_allowed_host(entry: &str) -> Result<Origin, ConfigError> {
    let invalid = || ConfigError::InvalidAllowedHost {
        entry: entry.to_owned(),
    };
    let text = if entry.contains("://") {
        entry.to_owned()
    } else {
        format!("https://{entry}")
    };
    let url = Url::parse(&text).map_err(|_| invalid())?;
    // A bare entry must be only a host (and port): "host/path" is more likely a mistake.
    if !entry.contains("://") && url.path() != "/" {
        return Err(invalid());
    }
    http_origin(&url).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn origins(base: &str, extra: &[&str]) -> AllowedOrigins {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        AllowedOrigins::new(&url(base), &extra).unwrap()
    }

    #[test]
    fn the_base_origin_is_allowed_whatever_the_path() {
        let allowed = origins("https://generativelanguage.googleapis.com", &[]);
        assert!(allowed.allows(&url(
            "https://generativelanguage.googleapis.com/download/v1beta/files/a:download?alt=media"
        )));
        assert!(allowed.allows(&url("https://GenerativeLanguage.googleapis.com:443/x")));
    }

    #[test]
    fn another_port_scheme_or_host_is_another_origin() {
        let allowed = origins("http://127.0.0.1:8080", &[]);
        assert!(allowed.allows(&url("http://127.0.0.1:8080/a")));
        assert!(!allowed.allows(&url("http://127.0.0.1:8081/a")));
        assert!(!allowed.allows(&url("https://127.0.0.1:8080/a")));
        assert!(!allowed.allows(&url("http://127.0.0.2:8080/a")));
        assert!(!allowed.allows(&url("http://localhost:8080/a")));
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_never_allowed() {
        let allowed = origins("https://example.com", &[]);
        assert!(!allowed.allows(&url("https://user:pw@example.com/a")));
        assert!(!allowed.allows(&url("gs://example.com/a")));
        assert!(!allowed.allows(&url("file:///etc/passwd")));
    }

    #[test]
    fn allowed_host_entries_default_to_https_on_the_default_port() {
        let allowed = origins(
            "https://generativelanguage.googleapis.com",
            &[
                "storage.googleapis.com",
                "cdn.example:8443",
                "http://127.0.0.1:9000",
                " ",
            ],
        );
        assert!(allowed.allows(&url("https://storage.googleapis.com/b/o")));
        assert!(!allowed.allows(&url("http://storage.googleapis.com/b/o")));
        assert!(allowed.allows(&url("https://cdn.example:8443/v")));
        assert!(!allowed.allows(&url("https://cdn.example/v")));
        assert!(allowed.allows(&url("http://127.0.0.1:9000/v")));
        assert!(!allowed.is_base(&url("http://127.0.0.1:9000/v")));
    }

    #[test]
    fn malformed_entries_and_base_urls_are_configuration_errors() {
        for entry in ["host/path", "ftp://host", "https://", "a b"] {
            assert!(parse_allowed_host(entry).is_err(), "{entry}");
        }
        assert!(AllowedOrigins::new(&url("gs://bucket"), &[]).is_err());
    }

    #[test]
    fn display_origin_drops_the_path_and_query() {
        assert_eq!(
            display_origin(&url("https://h.example:444/p?token=secret")),
            "https://h.example:444"
        );
    }
}
