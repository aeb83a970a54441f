//! Captured deliveries, read back for `gemhook verify`: which secret or key a delivery verifies
//! with, or why it does not (see [`crate::tools::explain`]).
//!
//! [`parse_capture`] is pure and takes three shapes, told apart by their first character:
//!
//! - the JSON `gemhook events show --json` prints: `headers` is an object of the headers the
//!   receiver kept, the body is in `body_base64` (exact bytes) and `body` (text, or null when
//!   the body is not UTF-8);
//! - any JSON object of the same form, `{"headers": {...}, "body": "..."}` or with `body_base64`
//!   (what one writes by hand from a proxy's log); `headers` may also be a list of
//!   `[name, value]` pairs;
//! - a raw HTTP/1.1 request as text (request line, headers, a blank line, the body), with CRLF
//!   or bare LF line ends, as `nc -l`, `tcpdump -A` or a debugging proxy saves it.
//!
//! [`run_verify`] is the command itself, minus the configuration: it reads the file, picks the
//! clock, judges the capture by the receiver's own policy ([`jwks::verify_refetching`]: Google's
//! keys are fetched only when they could verify it) and renders the explanation.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::jwks::{self, JwksCache};
use crate::tools::explain::{Explanation, explain};
use crate::verify::{self, Keys, Policy, PublishedKeys, Rejection, WebhookHeaders};

/// The Standard Webhooks headers, by their lower-case names.
const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// A delivery as captured: its headers and its exact body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Header names lower-cased, values with surrounding spaces and tabs removed (as an HTTP
    /// server hands them over), in capture order; a repeated name keeps every occurrence.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Capture {
    /// The first value of a header; `name` is matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The three webhook headers, the first occurrence of each (what the receiver's header map
    /// gives it).
    pub fn webhook_headers(&self) -> WebhookHeaders<'_> {
        WebhookHeaders {
            id: self.header(WEBHOOK_ID),
            timestamp: self.header(WEBHOOK_TIMESTAMP),
            signature: self.header(WEBHOOK_SIGNATURE),
        }
    }
}

/// Which shape a capture had; said in the report so a surprise (JSON read as HTTP) shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureFormat {
    /// `gemhook events show --json`.
    EventJson,
    /// `{"headers": ..., "body" | "body_base64": ...}`.
    Json,
    /// A raw HTTP/1.1 request.
    Http,
}

impl fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaptureFormat::EventJson => "gemhook events show --json",
            CaptureFormat::Json => "JSON headers and body",
            CaptureFormat::Http => "raw HTTP request",
        })
    }
}

/// Why a capture could not be read or verified.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the capture is empty")]
    Empty,
    #[error("the capture starts like JSON but does not parse")]
    Json(#[source] serde_json::Error),
    #[error("the capture is JSON but not an object with \"headers\"")]
    NotACaptureObject,
    #[error("\"headers\" must be an object of strings or a list of [name, value] pairs")]
    HeadersShape,
    #[error("the value of header {0:?} is not a string or a number")]
    HeaderValue(String),
    #[error("\"body_base64\" is not a string of standard base64")]
    BodyBase64(#[source] Option<base64::DecodeError>),
    #[error(
        "\"body\" is not a string: the exact bytes are needed (quote the body, or give \"body_base64\")"
    )]
    BodyNotText,
    #[error("the JSON has neither \"body_base64\" nor a \"body\" string")]
    NoBody,
    #[error("no blank line ends the HTTP headers")]
    NoBlankLine,
    #[error("line {line} of the HTTP request is not a \"Name: value\" header")]
    HeaderLine { line: usize },
    #[error("Content-Length {0:?} is not a number")]
    ContentLength(String),
    #[error("Content-Length is {declared} but only {available} body bytes were captured")]
    Truncated { declared: usize, available: usize },
    #[error("the chunked body is malformed: {0}")]
    Chunked(&'static str),
    #[error("--at-receipt needs a webhook-timestamp that is an integer number of seconds")]
    NoReceiptTime,
    #[error("the explanation could not be written as JSON")]
    Render(#[source] serde_json::Error),
}

/// Reads a capture in any of the shapes of the module doc.
pub fn parse_capture(bytes: &[u8]) -> Result<Capture, CaptureError> {
    parse_with_format(bytes).map(|(capture, _)| capture)
}

fn parse_with_format(bytes: &[u8]) -> Result<(Capture, CaptureFormat), CaptureError> {
    // A byte-order mark from an editor is not part of either shape.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(CaptureError::Empty),
        Some(b'{') => parse_json(bytes),
        Some(_) => parse_http(bytes).map(|capture| (capture, CaptureFormat::Http)),
    }
}

fn parse_json(bytes: &[u8]) -> Result<(Capture, CaptureFormat), CaptureError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(CaptureError::Json)?;
    let object = value.as_object().ok_or(CaptureError::NotACaptureObject)?;
    let headers = match object.get("headers") {
        Some(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(name, value)| header(name, value))
            .collect::<Result<Vec<_>, _>>()?,
        Some(serde_json::Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([serde_json::Value::String(name), value]) => header(name, value),
                _ => Err(CaptureError::HeadersShape),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(CaptureError::HeadersShape),
        None => return Err(CaptureError::NotACaptureObject),
    };
    // base64 first: `body` is lossy (null for a non-UTF-8 body) and may have been re-encoded by
    // whatever tool the JSON went through.
    let body = match (object.get("body_base64"), object.get("body")) {
        (Some(serde_json::Value::String(encoded)), _) => STANDARD
            .decode(encoded.trim())
            .map_err(|e| CaptureError::BodyBase64(Some(e)))?,
        (Some(serde_json::Value::Null) | None, Some(serde_json::Value::String(text))) => {
            text.clone().into_bytes()
        }
        (Some(serde_json::Value::Null) | None, Some(serde_json::Value::Null) | None) => {
            return Err(CaptureError::NoBody);
        }
        (Some(serde_json::Value::Null) | None, Some(_)) => return Err(CaptureError::BodyNotText),
        (Some(_), _) => return Err(CaptureError::BodyBase64(None)),
    };
    // `webhook_id` and `received_at` are what `events show --json` adds around the headers.
    let format = if object.contains_key("webhook_id") && object.contains_key("received_at") {
        CaptureFormat::EventJson
    } else {
        CaptureFormat::Json
    };
    Ok((Capture { headers, body }, format))
}

fn header(name: &str, value: &serde_json::Value) -> Result<(String, String), CaptureError> {
    let value = match value {
        serde_json::Value::String(text) => text.clone(),
        // A hand-written capture may give the timestamp as a number.
        serde_json::Value::Number(number) => number.to_string(),
        _ => return Err(CaptureError::HeaderValue(name.to_owned())),
    };
    Ok((
        name.trim().to_ascii_lowercase(),
        trim_ows(&value).to_owned(),
    ))
}

/// HTTP's optional whitespace around a field value: spaces and tabs, nothing else.
fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

fn parse_http(bytes: &[u8]) -> Result<Capture, CaptureError> {
    let mut rest = bytes;
    // Blank lines before the request line are tolerated, as RFC 9112 asks of servers.
    while let Some(after) = rest
        .strip_prefix(b"\r\n")
        .or_else(|| rest.strip_prefix(b"\n"))
    {
        rest = after;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut line_number = 0;
    let body = loop {
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            return Err(CaptureError::NoBlankLine);
        };
        let line = &rest[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[end + 1..];
        line_number += 1;
        if line.is_empty() {
            break rest;
        }
        // Header bytes outside UTF-8 become U+FFFD: the receiver would refuse such a webhook
        // header as not visible ASCII, and `run_verify` checks that on the text.
        let text = String::from_utf8_lossy(line);
        if line_number == 1 && is_request_line(&text) {
            continue;
        }
        if text.starts_with([' ', '\t']) {
            // Obsolete line folding: a continuation of the previous value.
            let (_, value) = headers
                .last_mut()
                .ok_or(CaptureError::HeaderLine { line: line_number })?;
            value.push(' ');
            value.push_str(trim_ows(&text));
            continue;
        }
        let (name, value) = text
            .split_once(':')
            .filter(|(name, _)| is_token(name))
            .ok_or(CaptureError::HeaderLine { line: line_number })?;
        headers.push((name.to_ascii_lowercase(), trim_ows(value).to_owned()));
    };
    let capture = Capture {
        headers,
        body: Vec::new(),
    };
    let body = if capture
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(body)?
    } else if let Some(declared) = capture.header("content-length") {
        let declared: usize = declared
            .parse()
            .map_err(|_| CaptureError::ContentLength(declared.to_owned()))?;
        // Longer than declared is usual (an editor's final newline); shorter is a cut capture.
        body.get(..declared)
            .ok_or(CaptureError::Truncated {
                declared,
                available: body.len(),
            })?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Capture { body, ..capture })
}

/// `METHOD target HTTP/x.y`; also a bare `METHOD target`, as some tools print it. The target
/// is what a request line may carry: a path, an absolute URL, or `*`.
fn is_request_line(line: &str) -> bool {
    let parts: Vec<&str> = line.split(' ').collect();
    let (method, target, version) = match parts.as_slice() {
        [method, target] => (*method, *target, None),
        [method, target, version] => (*method, *target, Some(*version)),
        _ => return false,
    };
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && (target.starts_with('/')
            || target.starts_with("http://")
            || target.starts_with("https://")
            || target == "*")
        && version.is_none_or(|version| version.starts_with("HTTP/"))
}

/// An HTTP field name: one token (RFC 9110 tchar).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reassembles a chunked body. Chunk extensions and trailers are skipped.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, CaptureError> {
    let mut body = Vec::new();
    loop {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(CaptureError::Chunked("a chunk size line has no end"))?;
        let line = String::from_utf8_lossy(&rest[..end]);
        rest = &rest[end + 1..];
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| CaptureError::Chunked("a chunk size is not hexadecimal"))?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest
            .get(..size)
            .ok_or(CaptureError::Chunked("a chunk is cut short"))?;
        body.extend_from_slice(chunk);
        rest = &rest[size..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .ok_or(CaptureError::Chunked(
                "a chunk does not end with a line end",
            ))?;
    }
}

/// `gemhook verify`: explain a captured delivery against the configured keys.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The capture: `gemhook events show --json` output, a JSON {"headers", "body"} object, or a
    /// raw HTTP request. "-" reads standard input.
    pub file: PathBuf,
    /// Check as of this Unix time (seconds) instead of the system clock.
    #[arg(long, value_name = "UNIX_SECS", conflicts_with = "at_receipt")]
    pub now: Option<i64>,
    /// Check as of the capture's own webhook-timestamp, to see whether the signature is good
    /// whatever the capture's age.
    #[arg(long)]
    pub at_receipt: bool,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The JSON `--json` prints: the capture's shape and size, then the explanation's fields.
#[derive(Serialize)]
struct Report<'a> {
    capture: CaptureSummary<'a>,
    #[serde(flatten)]
    explanation: &'a Explanation,
}

#[derive(Serialize)]
struct CaptureSummary<'a> {
    file: &'a Path,
    format: CaptureFormat,
}

/// Runs `gemhook verify`: the text (or JSON) to print, and whether the delivery verifies.
///
/// `published` is Google's key set when dynamic webhooks are on; the caller fetches it.
pub async fn run_verify(
    args: &VerifyArgs,
    keys: &Keys,
    policy: &Policy,
    jwks: Option<&JwksCache>,
) -> Result<(String, bool), CaptureError> {
    let bytes = read_input(&args.file)?;
    let (capture, format) = parse_with_format(&bytes)?;
    let headers = capture.webhook_headers();
    let now = if args.at_receipt {
        headers
            .timestamp
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or(CaptureError::NoReceiptTime)?
    } else {
        args.now.unwrap_or_else(unix_now)
    };
    let published = match verify::check_headers(&headers) {
        Ok(checked) => {
            jwks::verify_refetching(jwks, &checked, &capture.body, keys, policy, now)
                .await
                .1
        }
        Err(_) => jwks.and_then(JwksCache::current),
    };
    let explanation = explain_capture(&capture, keys, policy, published.as_deref(), now);
    let accepted = explanation.accepted();
    let output = if args.json {
        let report = Report {
            capture: CaptureSummary {
                file: &args.file,
                format,
            },
            explanation: &explanation,
        };
        serde_json::to_string_pretty(&report).map_err(CaptureError::Render)?
    } else {
        format!(
            "capture: {} ({format}, {} headers)\n{explanation}",
            args.file.display(),
            capture.headers.len()
        )
    };
    Ok((output, accepted))
}

/// Explains a capture as the receiver would judge it had it arrived over HTTP at `now`.
pub fn explain_capture(
    capture: &Capture,
    keys: &Keys,
    policy: &Policy,
    published: Option<&PublishedKeys>,
    now: i64,
) -> Explanation {
    let headers = capture.webhook_headers();
    // The receiver reads each webhook header with `HeaderValue::to_str`, which refuses anything
    // but visible ASCII and tab before `verify` runs; a raw capture can hold such bytes.
    for (name, value) in [
        (WEBHOOK_ID, headers.id),
        (WEBHOOK_TIMESTAMP, headers.timestamp),
        (WEBHOOK_SIGNATURE, headers.signature),
    ] {
        let visible = |b: u8| (32..127).contains(&b) || b == b'\t';
        if value.is_some_and(|v| !v.bytes().all(visible)) {
            let rejection = Rejection::InvalidHeader {
                header: name,
                why: "not visible ASCII",
            };
            return Explanation::refused_before_verification(
                &headers,
                &capture.body,
                keys,
                published,
                now,
                rejection,
            );
        }
    }
    explain(&headers, &capture.body, keys, published, policy, now)
}

fn read_input(path: &Path) -> Result<Vec<u8>, CaptureError> {
    let read_error = |source| CaptureError::Read {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        Ok(bytes)
    } else {
        std::fs::read(path).map_err(read_error)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
