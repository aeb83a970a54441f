//! `gemhook send` and `gemhook secret generate`: the way a user tries gemhook, and tests their own
//! deployment, without waiting for Gemini (like `stripe trigger`).
//!
//! `send` builds a realistic Gemini event of any catalogue type (shapes from "Body: a thin
//! envelope with pointers" in the shared notes), signs it the way Gemini does and POSTs it.
//! The building and signing are pure apart from a clock and a random source, which the `*_at`
//! functions take as parameters so that tests are deterministic; only [`send`] reads the real
//! clock and talks to the network.
//!
//! Signing: `--secret whsec_...` adds a `v1` (HMAC) entry, `--signing-key whsk_...` a `v1a`
//! (Ed25519) entry; with both, the header carries both entries, space-separated, as a sender
//! in the middle of a migration would. At least one of the two is required.
//!
//! Secrets never appear in an error message or in `Debug` output: they are held as
//! [`SecretText`] until parsed, and the parse errors name the flag, not the value.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::SigningKey;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::envelope::KNOWN_TYPES;
use crate::tools::gemini_dev::resources::{self as dev, BatchState, InteractionStatus};
use crate::verify::{
    SecretError, SigningKeyError, WebhookSecret, WebhookSigningKey, sign_v1, sign_v1a,
};

/// Length of a generated `whsec_` secret, in random bytes: 256 bits, the size of the
/// HMAC-SHA256 output it keys.
pub const DEFAULT_SECRET_BYTES: usize = 32;
/// Shortest secret `secret generate` produces: 192 bits, the length of Svix's own `whsec_`
/// secrets. Anything shorter is a weak HMAC key.
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest secret `secret generate` produces: the HMAC-SHA256 block size. A longer key is
/// hashed down to 32 bytes by HMAC itself, so it would only look stronger.
pub const MAX_SECRET_BYTES: usize = 64;

/// Why a secret could not be generated or an event could not be built, signed or sent. The
/// messages never contain a secret or signing key.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("a secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {0}")]
    SecretLength(usize),
    #[error("the operating system's random source failed")]
    Entropy(#[source] rand::Error),
    #[error("the --secret is invalid")]
    InvalidSecret(#[source] SecretError),
    #[error("the --signing-key is invalid")]
    InvalidSigningKey(#[source] SigningKeyError),
    #[error("nothing to sign with: give --secret whsec_... or --signing-key whsk_... (or both)")]
    MissingKey,
    #[error("--data is not valid JSON")]
    InvalidData(#[source] serde_json::Error),
    #[error("--data must be a JSON object (its keys replace the generated data's)")]
    DataNotObject,
    #[error("the event type is empty")]
    EmptyEventType,
    #[error("the --id is unusable as a webhook-id header: {0}")]
    InvalidId(&'static str),
    #[error("--timestamp-offset moves the timestamp out of the representable range")]
    TimestampOutOfRange,
    #[error("the --url is not a valid URL")]
    InvalidUrl(#[source] url::ParseError),
    #[error("the --url must be http or https, not {0}")]
    UnsupportedScheme(String),
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
    #[error("the request could not be completed")]
    Request(#[source] reqwest::Error),
}

/// A secret given on the command line. `From<String>` (rather than a fallible value parser)
/// so that clap never echoes the value in a parse error; the parse happens in `send`, whose
/// errors name the flag only.
pub type SecretText = crate::redact::Redacted;

/// `gemhook secret ...`
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Print a fresh whsec_ secret for GEMHOOK_WEBHOOK_SECRETS (and for `gemhook send
    /// --secret`); with --signing-key, a whsk_/whpk_ Ed25519 pair for trying v1a instead.
    Generate {
        /// Random bytes in the secret (24 to 64).
        #[arg(long, default_value_t = DEFAULT_SECRET_BYTES)]
        bytes: usize,
        /// Print a whsk_ signing key and its whpk_ public key instead of a whsec_ secret.
        #[arg(long, conflicts_with = "bytes")]
        signing_key: bool,
    },
}

/// `gemhook send <event-type> --url URL [--secret whsec_...] [--signing-key whsk_...] ...`
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// A Gemini event type: batch.succeeded, batch.failed, batch.expired, batch.cancelled,
    /// interaction.completed, interaction.requires_action, interaction.failed,
    /// interaction.cancelled, video.generated. Any other type is sent with empty data (a
    /// receiver files it as ignored).
    pub event_type: String,
    /// The receiver's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/gemini")]
    pub url: String,
    /// A whsec_ secret: signs a v1 (HMAC) entry. Without it (and without --signing-key), the
    /// development secret that `gemhook serve` keeps beside the embedded database.
    #[arg(
        long,
        env = "GEMHOOK_SEND_SECRET",
        hide_env_values = true,
        value_name = "WHSEC"
    )]
    pub secret: Option<SecretText>,
    /// A whsk_ Ed25519 signing key: signs a v1a entry (in addition to v1 when --secret is also
    /// given). The receiver needs its whpk_ public key in GEMHOOK_PUBLIC_KEYS.
    #[arg(
        long,
        env = "GEMHOOK_SEND_SIGNING_KEY",
        hide_env_values = true,
        value_name = "WHSK"
    )]
    pub signing_key: Option<SecretText>,
    /// The webhook-id header [default: msg_<random uuid>]. Reuse one to test deduplication.
    #[arg(long)]
    pub id: Option<String>,
    /// The resource id put in data.id, and from which the pointers are derived (e.g. the
    /// results file of a batch) [default: a random id of the event's kind, one that
    /// `gemhook dev`'s stand-in for Gemini serves].
    #[arg(long)]
    pub resource_id: Option<String>,
    /// A JSON object whose keys replace those of the generated data.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Seconds added to the current time for webhook-timestamp (and the body's timestamp);
    /// e.g. -600 to test the stale-timestamp rejection.
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "SECS"
    )]
    pub timestamp_offset: i64,
    /// Print the request (headers and body) instead of sending it.
    #[arg(long, alias = "print-only")]
    pub dry_run: bool,
}

/// The HTTP answer to a sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A signed event, and the receiver's reply unless it was a dry run.
#[derive(Debug, Clone)]
pub struct SendOutcome {
    pub url: String,
    pub webhook_id: String,
    pub event_type: String,
    /// False for a type outside Gemini's catalogue: a receiver files it as `ignored`.
    pub known_type: bool,
    /// The `webhook-timestamp`, Unix seconds.
    pub timestamp: i64,
    pub timestamp_offset: i64,
    /// The request headers, in the order sent.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// `None` for a dry run.
    pub reply: Option<Reply>,
}

impl SendOutcome {
    /// True when the event was sent and answered 2xx; a dry run is not a success.
    pub fn is_success(&self) -> bool {
        self.reply
            .as_ref()
            .is_some_and(|reply| (200..300).contains(&reply.status))
    }
}

impl fmt::Display for SendOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "POST {} webhook-id={} type={}",
            self.url, self.webhook_id, self.event_type
        )?;
        if self.timestamp_offset != 0 {
            write!(f, " timestamp-offset={}s", self.timestamp_offset)?;
        }
        if !self.known_type {
            write!(
                f,
                "\nnote: {} is not in Gemini's catalogue; gemhook files it as ignored",
                self.event_type
            )?;
        }
        match &self.reply {
            Some(reply) => {
                write!(f, "\n→ {}", reply.status)?;
                let body = reply.body.trim_end();
                if !body.is_empty() {
                    write!(f, " {body}")?;
                }
            }
            None => {
                f.write_str("\n(dry run: not sent)")?;
                for (name, value) in &self.headers {
                    write!(f, "\n{name}: {value}")?;
                }
                write!(f, "\n\n{}", String::from_utf8_lossy(&self.body))?;
            }
        }
        Ok(())
    }
}

/// A fresh `whsec_` secret: standard padded base64 of `len_bytes` bytes from the operating
/// system's CSPRNG (never a seeded or user-space generator: this is a long-lived key).
pub fn generate_secret(len_bytes: usize) -> Result<String, SendError> {
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&len_bytes) {
        return Err(SendError::SecretLength(len_bytes));
    }
    let mut key = vec![0u8; len_bytes];
    OsRng.try_fill_bytes(&mut key).map_err(SendError::Entropy)?;
    Ok(format!("whsec_{}", STANDARD.encode(&key)))
}

/// A fresh Ed25519 pair for trying `v1a`: the `whsk_` signing key (for `send --signing-key`)
/// and its `whpk_` public key (for the receiver's `GEMHOOK_PUBLIC_KEYS`).
pub fn generate_signing_key() -> Result<(String, String), SendError> {
    let mut seed = [0u8; ed25519_dalek::SECRET_KEY_LENGTH];
    OsRng
        .try_fill_bytes(&mut seed)
        .map_err(SendError::Entropy)?;
    let key = SigningKey::from_bytes(&seed);
    // whsk_ is the seed followed by the public key, the form `WebhookSigningKey::parse` reads.
    let signing = format!("whsk_{}", STANDARD.encode(key.to_keypair_bytes()));
    let public = WebhookSigningKey::from_signing_key(key)
        .public_key()
        .to_string();
    Ok((signing, public))
}

/// The text `gemhook secret ...` prints. A plain secret is printed alone so that
/// `$(gemhook secret generate)` works; a pair as `NAME=value` lines, ready for an env file.
pub fn run_secret(command: SecretCommand) -> Result<String, SendError> {
    match command {
        SecretCommand::Generate {
            signing_key: true, ..
        } => {
            let (signing, public) = generate_signing_key()?;
            Ok(format!(
                "GEMHOOK_SEND_SIGNING_KEY={signing}\nGEMHOOK_PUBLIC_KEYS={public}"
            ))
        }
        SecretCommand::Generate { bytes, .. } => generate_secret(bytes),
    }
}

/// True for the event types of Gemini's catalogue.
pub fn is_catalogue_type(event_type: &str) -> bool {
    KNOWN_TYPES.contains(&event_type)
}

/// [`example_event_at`] now, with fresh random ids.
pub fn example_event(
    event_type: &str,
    resource_id: Option<&str>,
    data_override: Option<Value>,
) -> Result<Vec<u8>, SendError> {
    example_event_at(
        event_type,
        resource_id,
        data_override,
        Utc::now(),
        &mut rand::thread_rng(),
    )
}

/// The body of a realistic Gemini event: `{"type", "version": "v1", "timestamp", "data"}`.
///
/// `data` holds the catalogue's fields for the type, with random ids shaped like Gemini's;
/// `resource_id` replaces `data.id` (and the pointers derived from it), then the keys of `data_override` (a JSON object) replace
/// the generated ones. A type outside the catalogue is allowed, with empty data (see
/// [`is_catalogue_type`]): that is how a user checks that unknown types are kept as `ignored`.
pub fn example_event_at<R: Rng + ?Sized>(
    event_type: &str,
    resource_id: Option<&str>,
    data_override: Option<Value>,
    at: DateTime<Utc>,
    rng: &mut R,
) -> Result<Vec<u8>, SendError> {
    if event_type.is_empty() {
        return Err(SendError::EmptyEventType);
    }
    let overrides = match data_override {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(SendError::DataNotObject),
    };
    let mut data = example_data(event_type, resource_id, rng);
    data.extend(overrides);
    // A struct, not a `Value`: serde_json's map sorts keys, and a body that starts with `type`
    // reads like Gemini's published example.
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "type")]
        event_type: &'a str,
        version: &'static str,
        timestamp: String,
        data: Map<String, Value>,
    }
    let body = Body {
        event_type,
        version: "v1",
        timestamp: at.to_rfc3339_opts(SecondsFormat::Secs, true),
        data,
    };
    serde_json::to_vec(&body).map_err(SendError::InvalidData)
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_text<R: Rng + ?Sized>(rng: &mut R, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

/// The catalogue's `data` fields for a type, with ids in the shapes Gemini uses (`batches/...`
/// for batches, `v1_Chd...` for interactions, `files/...` for outputs), named the way
/// `gemhook dev`'s stand-in for Gemini reads them (see [`crate::tools::gemini_dev::resources`]):
/// each event points at a resource the stand-in has, in the state the event reports. A given
/// `resource_id` replaces the generated id, and the pointers derived from it follow.
fn example_data<R: Rng + ?Sized>(
    event_type: &str,
    resource_id: Option<&str>,
    rng: &mut R,
) -> Map<String, Value> {
    let batch = |rng: &mut R, state| {
        resource_id.map_or_else(
            || dev::batch_name(&random_text(rng, LOWER_ALNUM, 30), state),
            str::to_owned,
        )
    };
    // Interaction ids are opaque base64-ish text; alphanumerics only, so the id stays a single
    // safe path segment when the worker fetches it.
    let interaction = |rng: &mut R, status| {
        resource_id.map_or_else(
            || {
                let base = format!("v1_Chd{}", random_text(rng, ALNUM, 40));
                dev::interaction_name(&base, status)
            },
            str::to_owned,
        )
    };
    let text = |s: &str| Value::String(s.to_owned());
    let mut data = Map::new();
    match event_type {
        "batch.succeeded" => {
            let id = batch(rng, BatchState::Succeeded);
            data.insert(
                "output_file_uri".into(),
                text(&dev::batch_results_file(&id)),
            );
            data.insert("id".into(), Value::String(id));
        }
        "batch.failed" => {
            data.insert("id".into(), Value::String(batch(rng, BatchState::Failed)));
            data.insert("error_code".into(), Value::from(3));
            data.insert(
                "error_message".into(),
                text("Request 4 of the input file is not valid: missing field `contents`."),
            );
        }
        "batch.expired" => {
            data.insert("id".into(), Value::String(batch(rng, BatchState::Expired)));
        }
        "batch.cancelled" => {
            data.insert(
                "id".into(),
                Value::String(batch(rng, BatchState::Cancelled)),
            );
        }
        "interaction.completed" => {
            let id = interaction(rng, InteractionStatus::Completed);
            data.insert("id".into(), Value::String(id));
        }
        "interaction.requires_action" => {
            let id = interaction(rng, InteractionStatus::RequiresAction);
            data.insert("id".into(), Value::String(id));
        }
        "interaction.cancelled" => {
            let id = interaction(rng, InteractionStatus::Cancelled);
            data.insert("id".into(), Value::String(id));
        }
        "interaction.failed" => {
            let id = interaction(rng, InteractionStatus::Failed);
            data.insert("id".into(), Value::String(id));
            data.insert("error_code".into(), Value::from(13));
            data.insert(
                "error_message".into(),
                text("An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
            );
        }
        "video.generated" => {
            let id = resource_id.map_or_else(
                || dev::video_operation_name(&random_text(rng, LOWER_ALNUM, 12)),
                str::to_owned,
            );
            let file = dev::video_file(&id);
            // The full download URL a Veo operation returns, and the file's resource name.
            data.insert(
                "output_file_uri".into(),
                Value::String(format!(
                    "https://generativelanguage.googleapis.com/v1beta/{file}:download?alt=media"
                )),
            );
            data.insert("file_name".into(), Value::String(file));
            data.insert("id".into(), Value::String(id));
        }
        // Outside the catalogue: no data to invent.
        _ => {}
    }
    data
}

/// A `msg_<uuid v4>` webhook-id, the shape Gemini sends.
fn random_webhook_id<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "msg_{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The Standard Webhooks headers for one delivery, in the order sent: `webhook-id`,
/// `webhook-timestamp`, `webhook-signature` (a `v1` entry for the secret, then a `v1a` entry for
/// the signing key, space-separated) and `content-type`.
pub fn signed_headers(
    id: &str,
    timestamp: i64,
    body: &[u8],
    secret: Option<&WebhookSecret>,
    signing_key: Option<&WebhookSigningKey>,
) -> Result<Vec<(&'static str, String)>, SendError> {
    let entries: Vec<String> = secret
        .map(|secret| sign_v1(secret, id, timestamp, body))
        .into_iter()
        .chain(signing_key.map(|key| sign_v1a(key, id, timestamp, body)))
        .collect();
    if entries.is_empty() {
        return Err(SendError::MissingKey);
    }
    Ok(vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", entries.join(" ")),
        ("content-type", "application/json".to_owned()),
    ])
}

/// Everything [`send`] does before the network: parse the keys and `--data`, build the body,
/// sign it at `now + --timestamp-offset`. The reply is left empty.
pub fn prepare_at<R: Rng + ?Sized>(
    args: &SendArgs,
    now: DateTime<Utc>,
    rng: &mut R,
) -> Result<SendOutcome, SendError> {
    let url = url::Url::parse(&args.url).map_err(SendError::InvalidUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SendError::UnsupportedScheme(url.scheme().to_owned()));
    }
    let secret = args
        .secret
        .as_ref()
        .map(|text| WebhookSecret::parse(text.expose()))
        .transpose()
        .map_err(SendError::InvalidSecret)?;
    let signing_key = args
        .signing_key
        .as_ref()
        .map(|text| WebhookSigningKey::parse(text.expose()))
        .transpose()
        .map_err(SendError::InvalidSigningKey)?;
    if secret.is_none() && signing_key.is_none() {
        return Err(SendError::MissingKey);
    }
    let data = args
        .data
        .as_deref()
        .map(serde_json::from_str::<Value>)
        .transpose()
        .map_err(SendError::InvalidData)?;
    let webhook_id = match &args.id {
        Some(id) => check_webhook_id(id)?.to_owned(),
        None => random_webhook_id(rng),
    };
    let timestamp = now
        .timestamp()
        .checked_add(args.timestamp_offset)
        .ok_or(SendError::TimestampOutOfRange)?;
    // The body's event time moves with the header: an old delivery carries an old event.
    let at = DateTime::<Utc>::from_timestamp(timestamp, 0).ok_or(SendError::TimestampOutOfRange)?;
    let body = example_event_at(&args.event_type, args.resource_id.as_deref(), data, at, rng)?;
    let headers = signed_headers(
        &webhook_id,
        timestamp,
        &body,
        secret.as_ref(),
        signing_key.as_ref(),
    )?;
    Ok(SendOutcome {
        url: args.url.clone(),
        webhook_id,
        known_type: is_catalogue_type(&args.event_type),
        event_type: args.event_type.clone(),
        timestamp,
        timestamp_offset: args.timestamp_offset,
        headers,
        body,
        reply: None,
    })
}

/// Only what HTTP itself forbids is refused: an over-long id is still sent, so a user can watch
/// the receiver reject it.
fn check_webhook_id(id: &str) -> Result<&str, SendError> {
    if id.is_empty() {
        return Err(SendError::InvalidId("it is empty"));
    }
    if id.chars().any(char::is_control) {
        return Err(SendError::InvalidId("it contains control characters"));
    }
    Ok(id)
}

/// Builds, signs and POSTs the event (or, with `--dry-run`, only builds and signs it).
pub async fn send(args: SendArgs) -> Result<SendOutcome, SendError> {
    let mut outcome = prepare_at(&args, Utc::now(), &mut rand::thread_rng())?;
    if args.dry_run {
        return Ok(outcome);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // A redirect would turn the POST into a GET elsewhere; the user should see the 3xx.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gemhook-send/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SendError::Client)?;
    let mut request = client.post(&outcome.url).body(outcome.body.clone());
    for (name, value) in &outcome.headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.map_err(SendError::Request)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(SendError::Request)?;
    outcome.reply = Some(Reply { status, body });
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use clap::Parser;
    use hmac::{Hmac, Mac};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use sha2::Sha256;

    use super::*;
    use crate::envelope::{self, EventStatus};
    use crate::verify::{Keys, Policy, Rejection, Scheme, WebhookHeaders, verify};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SIGNING_KEY: &str = "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(unix, 0).unwrap()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn args(event_type: &str) -> SendArgs {
        SendArgs {
            event_type: event_type.to_owned(),
            url: "http://127.0.0.1:9/webhooks/gemini".to_owned(),
            secret: Some(SecretText::from(SECRET.to_owned())),
            signing_key: None,
            id: None,
            resource_id: None,
            data: None,
            timestamp_offset: 0,
            dry_run: true,
        }
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    fn keys() -> Keys {
        Keys {
            secrets: vec![WebhookSecret::parse(SECRET).unwrap()],
            public_keys: vec![WebhookSigningKey::parse(SIGNING_KEY).unwrap().public_key()],
        }
    }

    fn verify_headers(
        headers: &[(&'static str, String)],
        body: &[u8],
        keys: &Keys,
        now: i64,
    ) -> Result<Scheme, Rejection> {
        let checked = WebhookHeaders {
            id: Some(header(headers, "webhook-id")),
            timestamp: Some(header(headers, "webhook-timestamp")),
            signature: Some(header(headers, "webhook-signature")),
        };
        verify(&checked, body, keys, None, &Policy::default(), now).map(|v| v.scheme)
    }

    fn data_of(body: &[u8]) -> Map<String, Value> {
        let value: Value = serde_json::from_slice(body).unwrap();
        value["data"].as_object().unwrap().clone()
    }

    #[test]
    fn every_catalogue_type_builds_an_envelope_the_receiver_accepts_with_its_id() {
        for &event_type in KNOWN_TYPES {
            let body =
                example_event_at(event_type, None, None, at(1_769_083_200), &mut rng()).unwrap();
            let parsed = envelope::parse(&body);
            assert_eq!(parsed.status, EventStatus::Accepted, "{event_type}");
            assert_eq!(parsed.event_type.as_deref(), Some(event_type));
            let id = parsed.resource_id.unwrap();
            let expected_prefix = match event_type.split('.').next().unwrap() {
                "batch" => "batches/",
                "interaction" => "v1_Chd",
                _ => "models/veo-",
            };
            assert!(id.starts_with(expected_prefix), "{event_type}: {id}");
            let value: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["version"], "v1");
            assert_eq!(value["timestamp"], "2026-01-22T12:00:00Z");
        }
    }

    #[test]
    fn each_type_carries_the_catalogue_fields_for_its_pointer() {
        let fields = |event_type| {
            let body = example_event_at(event_type, None, None, at(0), &mut rng()).unwrap();
            let mut keys: Vec<String> = data_of(&body).keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(fields("batch.succeeded"), ["id", "output_file_uri"]);
        assert_eq!(
            fields("batch.failed"),
            ["error_code", "error_message", "id"]
        );
        assert_eq!(fields("batch.expired"), ["id"]);
        assert_eq!(
            fields("interaction.failed"),
            ["error_code", "error_message", "id"]
        );
        assert_eq!(
            fields("video.generated"),
            ["file_name", "id", "output_file_uri"]
        );
        let batch =
            data_of(&example_event_at("batch.succeeded", None, None, at(0), &mut rng()).unwrap());
        assert!(
            batch["output_file_uri"]
                .as_str()
                .unwrap()
                .starts_with("files/")
        );
    }

    #[test]
    fn every_catalogue_event_points_at_what_the_dev_stand_in_serves_in_its_state() {
        use crate::tools::gemini_dev::resources::{self as dev, DevFile};
        let id_of = |data: &Map<String, Value>| data["id"].as_str().unwrap().to_owned();
        let last = |name: &str| name.rsplit('/').next().unwrap().to_owned();
        for &event_type in KNOWN_TYPES {
            let body = example_event_at(event_type, None, None, at(0), &mut rng()).unwrap();
            let data = data_of(&body);
            let id = id_of(&data);
            match event_type {
                "batch.succeeded" => {
                    let file = data["output_file_uri"].as_str().unwrap();
                    let file = file.strip_prefix("files/").unwrap();
                    assert_eq!(
                        dev::file(file),
                        Some(DevFile::BatchResults { batch: &last(&id) })
                    );
                }
                "batch.failed" | "batch.expired" | "batch.cancelled" => {
                    let state = dev::batch_state(&last(&id)).unwrap();
                    assert_eq!(
                        state.job_state(),
                        format!("JOB_STATE_{}", event_type[6..].to_uppercase())
                    );
                }
                "video.generated" => {
                    let file = data["file_name"].as_str().unwrap();
                    let operation = last(&id);
                    assert_eq!(
                        dev::file(file.strip_prefix("files/").unwrap()),
                        Some(DevFile::Video {
                            operation: &operation
                        })
                    );
                    assert!(
                        data["output_file_uri"]
                            .as_str()
                            .unwrap()
                            .ends_with(&format!("{file}:download?alt=media"))
                    );
                }
                interaction => {
                    let status = dev::interaction_status(&id).unwrap();
                    assert_eq!(
                        status.as_str(),
                        interaction.trim_start_matches("interaction.")
                    );
                }
            }
        }
    }

    #[test]
    fn a_given_resource_id_carries_its_pointers_with_it() {
        let body = example_event_at(
            "batch.succeeded",
            Some("batches/mine"),
            None,
            at(0),
            &mut rng(),
        )
        .unwrap();
        let data = data_of(&body);
        assert_eq!(data["id"], "batches/mine");
        assert_eq!(data["output_file_uri"], "files/batch-mine");
        let body = example_event_at(
            "video.generated",
            Some("models/veo-3.1-generate-preview/operations/op7"),
            None,
            at(0),
            &mut rng(),
        )
        .unwrap();
        assert_eq!(data_of(&body)["file_name"], "files/video-op7");
    }

    #[test]
    fn the_same_clock_and_seed_build_the_same_body() {
        let one = example_event_at("batch.succeeded", None, None, at(5), &mut rng()).unwrap();
        let two = example_event_at("batch.succeeded", None, None, at(5), &mut rng()).unwrap();
        assert_eq!(one, two);
        assert!(one.starts_with(br#"{"type":"batch.succeeded","version":"v1""#));
    }

    #[test]
    fn data_keys_replace_the_generated_ones_and_resource_id_sets_the_id() {
        let body = example_event_at(
            "batch.failed",
            Some("batches/mine"),
            Some(serde_json::json!({"error_code": "INTERNAL", "extra": [1, 2]})),
            at(0),
            &mut rng(),
        )
        .unwrap();
        let data = data_of(&body);
        assert_eq!(data["id"], "batches/mine");
        assert_eq!(data["error_code"], "INTERNAL");
        assert_eq!(data["extra"], serde_json::json!([1, 2]));
        assert!(data["error_message"].is_string());

        let overridden = example_event_at(
            "batch.failed",
            Some("batches/mine"),
            Some(serde_json::json!({"id": "batch_123"})),
            at(0),
            &mut rng(),
        )
        .unwrap();
        assert_eq!(
            envelope::parse(&overridden).resource_id.as_deref(),
            Some("batch_123")
        );
    }

    #[test]
    fn data_that_is_not_an_object_is_refused() {
        let result = example_event_at(
            "batch.failed",
            None,
            Some(Value::from(3)),
            at(0),
            &mut rng(),
        );
        assert!(matches!(result, Err(SendError::DataNotObject)));
        let mut bad = args("batch.failed");
        bad.data = Some("{not json".to_owned());
        assert!(matches!(
            prepare_at(&bad, at(0), &mut rng()),
            Err(SendError::InvalidData(_))
        ));
    }

    #[test]
    fn an_unknown_type_is_sent_with_empty_data_and_filed_as_ignored() {
        let body = example_event_at("model.tuned", None, None, at(0), &mut rng()).unwrap();
        assert_eq!(envelope::parse(&body).status, EventStatus::Ignored);
        assert!(data_of(&body).is_empty());
        let outcome = prepare_at(&args("model.tuned"), at(0), &mut rng()).unwrap();
        assert!(!outcome.known_type);
        assert!(outcome.to_string().contains("not in Gemini's catalogue"));
    }

    #[test]
    fn the_reference_vector_is_reproduced_by_the_signing_path() {
        // tests/data/standard-webhooks-vectors.json, B_valid_rust_reference_vector.
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let headers = signed_headers(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1_649_367_553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
            Some(&secret),
            None,
        )
        .unwrap();
        assert_eq!(
            header(&headers, "webhook-signature"),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(
            header(&headers, "webhook-id"),
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"
        );
        assert_eq!(header(&headers, "webhook-timestamp"), "1649367553");
        assert_eq!(header(&headers, "content-type"), "application/json");
    }

    #[test]
    fn the_v1_entry_matches_an_independent_hmac_of_the_standard_webhooks_content() {
        let outcome = prepare_at(&args("batch.succeeded"), at(1_700_000_000), &mut rng()).unwrap();
        let id = header(&outcome.headers, "webhook-id");
        let timestamp = header(&outcome.headers, "webhook-timestamp");
        // Standard Webhooks: HMAC-SHA256 keyed with the base64-decoded secret over
        // `id.timestamp.body`, standard base64, prefixed `v1,`.
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&outcome.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(header(&outcome.headers, "webhook-signature"), expected);
        assert_eq!(timestamp, "1700000000");
    }

    #[test]
    fn a_v1_signed_event_verifies_with_gemhooks_verifier() {
        let outcome = prepare_at(&args("video.generated"), at(1_700_000_000), &mut rng()).unwrap();
        assert_eq!(
            verify_headers(&outcome.headers, &outcome.body, &keys(), 1_700_000_000),
            Ok(Scheme::V1)
        );
    }

    #[test]
    fn a_v1a_signed_event_verifies_with_only_the_public_key() {
        let mut only_v1a = args("interaction.completed");
        only_v1a.secret = None;
        only_v1a.signing_key = Some(SecretText::from(SIGNING_KEY.to_owned()));
        let outcome = prepare_at(&only_v1a, at(1_700_000_000), &mut rng()).unwrap();
        assert!(header(&outcome.headers, "webhook-signature").starts_with("v1a,"));
        let public_only = Keys {
            secrets: vec![],
            public_keys: keys().public_keys,
        };
        assert_eq!(
            verify_headers(&outcome.headers, &outcome.body, &public_only, 1_700_000_000),
            Ok(Scheme::V1a)
        );
    }

    #[test]
    fn with_both_keys_the_header_carries_a_v1_and_a_v1a_entry() {
        let mut both = args("batch.expired");
        both.signing_key = Some(SecretText::from(SIGNING_KEY.to_owned()));
        let outcome = prepare_at(&both, at(1_700_000_000), &mut rng()).unwrap();
        let signature = header(&outcome.headers, "webhook-signature");
        let versions: Vec<&str> = signature
            .split(' ')
            .map(|entry| entry.split_once(',').unwrap().0)
            .collect();
        assert_eq!(versions, ["v1", "v1a"]);
        let public_only = Keys {
            secrets: vec![],
            public_keys: keys().public_keys,
        };
        assert_eq!(
            verify_headers(&outcome.headers, &outcome.body, &public_only, 1_700_000_000),
            Ok(Scheme::V1a)
        );
    }

    #[test]
    fn a_negative_timestamp_offset_makes_a_stale_delivery() {
        let mut stale = args("batch.succeeded");
        stale.timestamp_offset = -600;
        let outcome = prepare_at(&stale, at(1_700_000_000), &mut rng()).unwrap();
        assert_eq!(header(&outcome.headers, "webhook-timestamp"), "1699999400");
        assert_eq!(
            verify_headers(&outcome.headers, &outcome.body, &keys(), 1_700_000_000),
            Err(Rejection::TimestampTooOld { age_secs: 600 })
        );
        stale.timestamp_offset = i64::MIN;
        assert!(matches!(
            prepare_at(&stale, at(1_700_000_000), &mut rng()),
            Err(SendError::TimestampOutOfRange)
        ));
    }

    #[test]
    fn the_webhook_id_is_a_msg_uuid_unless_given() {
        let outcome = prepare_at(&args("batch.expired"), at(0), &mut rng()).unwrap();
        let id = &outcome.webhook_id;
        assert!(id.starts_with("msg_") && id.len() == 40, "{id}");
        assert_eq!(&id[18..19], "4");
        let mut given = args("batch.expired");
        given.id = Some("msg_mine".to_owned());
        let outcome = prepare_at(&given, at(0), &mut rng()).unwrap();
        assert_eq!(header(&outcome.headers, "webhook-id"), "msg_mine");
        given.id = Some("msg\n".to_owned());
        assert!(matches!(
            prepare_at(&given, at(0), &mut rng()),
            Err(SendError::InvalidId(_))
        ));
    }

    #[test]
    fn bad_keys_and_urls_are_refused_without_echoing_the_secret() {
        let mut bad = args("batch.expired");
        bad.secret = Some(SecretText::from("whsec_sup3r-secret!".to_owned()));
        let error = prepare_at(&bad, at(0), &mut rng()).unwrap_err();
        assert!(matches!(error, SendError::InvalidSecret(_)));
        let shown = format!("{error} {error:?} {:?}", std::error::Error::source(&error));
        assert!(!shown.contains("sup3r"), "{shown}");
        assert!(!format!("{bad:?}").contains("sup3r"));

        let mut bad = args("batch.expired");
        bad.signing_key = Some(SecretText::from("whsk_AAAA".to_owned()));
        assert!(matches!(
            prepare_at(&bad, at(0), &mut rng()),
            Err(SendError::InvalidSigningKey(_))
        ));

        let mut none = args("batch.expired");
        none.secret = None;
        assert!(matches!(
            prepare_at(&none, at(0), &mut rng()),
            Err(SendError::MissingKey)
        ));

        let mut ftp = args("batch.expired");
        ftp.url = "ftp://example.com/x".to_owned();
        assert!(matches!(
            prepare_at(&ftp, at(0), &mut rng()),
            Err(SendError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn generated_secrets_parse_back_and_decode_to_their_length() {
        for len in [24, 32, 64] {
            let secret = generate_secret(len).unwrap();
            assert!(WebhookSecret::parse(&secret).is_ok());
            let key = STANDARD
                .decode(secret.strip_prefix("whsec_").unwrap())
                .unwrap();
            assert_eq!(key.len(), len);
        }
        assert_ne!(generate_secret(32).unwrap(), generate_secret(32).unwrap());
        for len in [0, 23, 65] {
            assert!(matches!(
                generate_secret(len),
                Err(SendError::SecretLength(n)) if n == len
            ));
        }
    }

    #[test]
    fn a_generated_signing_key_parses_and_its_public_key_verifies_it() {
        let (signing, public) = generate_signing_key().unwrap();
        let key = WebhookSigningKey::parse(&signing).unwrap();
        assert_eq!(key.public_key().to_string(), public);
        let printed = run_secret(SecretCommand::Generate {
            bytes: DEFAULT_SECRET_BYTES,
            signing_key: true,
        })
        .unwrap();
        assert!(printed.starts_with("GEMHOOK_SEND_SIGNING_KEY=whsk_"));
        assert!(printed.contains("\nGEMHOOK_PUBLIC_KEYS=whpk_"));
        let plain = run_secret(SecretCommand::Generate {
            bytes: DEFAULT_SECRET_BYTES,
            signing_key: false,
        })
        .unwrap();
        assert!(plain.starts_with("whsec_") && !plain.contains('\n'));
    }

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Debug, clap::Subcommand)]
    enum TestCommand {
        Send(SendArgs),
        Secret {
            #[command(subcommand)]
            command: SecretCommand,
        },
    }

    #[test]
    fn the_command_line_takes_a_negative_offset_and_needs_a_key() {
        let cli = TestCli::try_parse_from([
            "gemhook",
            "send",
            "batch.succeeded",
            "--url",
            "http://127.0.0.1:8080/webhooks/gemini",
            "--secret",
            SECRET,
            "--timestamp-offset",
            "-600",
            "--data",
            r#"{"id":"batches/x"}"#,
        ])
        .unwrap();
        let TestCommand::Send(parsed) = cli.command else {
            panic!("not send");
        };
        assert_eq!(parsed.timestamp_offset, -600);
        assert_eq!(parsed.secret.as_ref().map(SecretText::expose), Some(SECRET));
        assert!(!format!("{parsed:?}").contains("MfKQ9r8"));

        let only_key = TestCli::try_parse_from([
            "gemhook",
            "send",
            "interaction.completed",
            "--url",
            "http://x/",
            "--signing-key",
            SIGNING_KEY,
        ]);
        assert!(only_key.is_ok());
        // Neither key nor URL: the command falls back to the local server's development
        // secret and URL (see `cli`), so parsing succeeds.
        let defaults = TestCli::try_parse_from(["gemhook", "send", "batch.expired"]).unwrap();
        let TestCommand::Send(defaults) = defaults.command else {
            panic!("not a send")
        };
        assert_eq!(defaults.url, "http://127.0.0.1:8080/webhooks/gemini");

        let secret =
            TestCli::try_parse_from(["gemhook", "secret", "generate", "--bytes", "48"]).unwrap();
        assert!(matches!(
            secret.command,
            TestCommand::Secret {
                command: SecretCommand::Generate {
                    bytes: 48,
                    signing_key: false
                }
            }
        ));
        let pair = TestCli::try_parse_from(["gemhook", "secret", "generate", "--signing-key"]);
        assert!(matches!(
            pair.unwrap().command,
            TestCommand::Secret {
                command: SecretCommand::Generate {
                    signing_key: true,
                    ..
                }
            }
        ));
        let both = [
            "gemhook",
            "secret",
            "generate",
            "--signing-key",
            "--bytes",
            "48",
        ];
        assert!(TestCli::try_parse_from(both).is_err());
    }

    #[test]
    fn the_outcome_reads_as_one_request_line_and_one_reply_line() {
        let mut outcome = prepare_at(&args("batch.succeeded"), at(0), &mut rng()).unwrap();
        outcome.reply = Some(Reply {
            status: 200,
            body: "{\"status\":\"accepted\"}\n".to_owned(),
        });
        assert_eq!(
            outcome.to_string(),
            format!(
                "POST http://127.0.0.1:9/webhooks/gemini webhook-id={} type=batch.succeeded\n→ 200 {{\"status\":\"accepted\"}}",
                outcome.webhook_id
            )
        );
        assert!(outcome.is_success());
        outcome.reply = None;
        let dry = outcome.to_string();
        assert!(dry.contains("(dry run: not sent)\nwebhook-id: msg_"));
        assert!(dry.ends_with(std::str::from_utf8(&outcome.body).unwrap()));
        assert!(!outcome.is_success());
    }

    type Captured = Arc<Mutex<Option<(HeaderMap, Bytes)>>>;

    #[tokio::test]
    async fn send_posts_a_signed_event_that_the_receiver_can_verify() {
        let captured: Captured = Arc::default();
        let router = axum::Router::new()
            .route(
                "/webhooks/gemini",
                axum::routing::post(
                    |State(captured): State<Captured>, headers: HeaderMap, body: Bytes| async move {
                        *captured.lock().unwrap() = Some((headers, body));
                        axum::Json(serde_json::json!({"status": "accepted"}))
                    },
                ),
            )
            .with_state(captured.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });

        let mut send_args = args("batch.succeeded");
        send_args.url = format!("http://{address}/webhooks/gemini");
        send_args.signing_key = Some(SecretText::from(SIGNING_KEY.to_owned()));
        send_args.dry_run = false;
        let outcome = send(send_args).await.unwrap();
        server.abort();

        assert_eq!(
            outcome.reply,
            Some(Reply {
                status: 200,
                body: r#"{"status":"accepted"}"#.to_owned()
            })
        );
        let (headers, body) = captured.lock().unwrap().take().unwrap();
        assert_eq!(body.as_ref(), outcome.body.as_slice());
        let value = |name: &str| headers.get(name).unwrap().to_str().unwrap();
        assert_eq!(value("content-type"), "application/json");
        assert_eq!(value("webhook-id"), outcome.webhook_id);
        let received = WebhookHeaders {
            id: Some(value("webhook-id")),
            timestamp: Some(value("webhook-timestamp")),
            signature: Some(value("webhook-signature")),
        };
        let now = Utc::now().timestamp();
        let verified = verify(&received, &body, &keys(), None, &Policy::default(), now).unwrap();
        assert_eq!(verified.scheme, Scheme::V1);
        let public_only = Keys {
            secrets: vec![],
            public_keys: keys().public_keys,
        };
        let verified = verify(
            &received,
            &body,
            &public_only,
            None,
            &Policy::default(),
            now,
        )
        .unwrap();
        assert_eq!(verified.scheme, Scheme::V1a);
        let parsed = envelope::parse(&body);
        assert_eq!(parsed.event_type.as_deref(), Some("batch.succeeded"));
        assert!(parsed.resource_id.unwrap().starts_with("batches/"));
    }
}
