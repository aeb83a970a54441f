//! Gemini's WebhookService (`/v1beta/webhooks`): register, list, update, delete, ping and
//! rotate the project's static webhooks, over the same [`GeminiClient`] the worker uses (so
//! the key goes only to the base URL's origin, in `x-goog-api-key`).
//!
//! Google's JSON mapping accepts both snake_case and lowerCamelCase names and its APIs answer
//! in either, so every field of an answer is read under both spellings, and unknown fields are
//! kept (the `raw` of each answer) for `--json`. A failed call becomes
//! [`WebhooksError::Api`] with the HTTP status, Google's `error.status` and `error.message`.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{ApiAnswer, GeminiClient, GeminiError};
use super::pointer::is_safe_id;
use crate::redact::Redacted;

/// The events a webhook can subscribe to, per the API reference (no `*.cancelled`).
pub const SUBSCRIBABLE_EVENTS: [&str; 7] = [
    "batch.succeeded",
    "batch.failed",
    "batch.expired",
    "interaction.requires_action",
    "interaction.completed",
    "interaction.failed",
    "video.generated",
];

/// A webhook's states, as the API writes them.
pub const STATES: [&str; 3] = ["enabled", "disabled", "disabled_due_to_failed_deliveries"];

/// Most pages `list` follows: a server that keeps answering with new tokens must not keep us
/// looping for ever (at the maximum page size this is a million webhooks).
const MAX_PAGES: usize = 1000;
/// The largest page the API serves.
const PAGE_SIZE: u32 = 1000;
/// How much of a non-JSON error body is quoted.
const ERROR_EXCERPT_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    /// Google answered with an error (its `{"error": {"code", "message", "status"}}`).
    #[error("Gemini answered {status}{}: {message}", google_status.as_deref().map(|s| format!(" {s}")).unwrap_or_default())]
    Api {
        status: u16,
        google_status: Option<String>,
        message: String,
    },
    #[error(transparent)]
    Request(#[from] GeminiError),
    #[error("Gemini's answer to {call} is not the JSON expected")]
    InvalidAnswer {
        call: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the webhook id has characters that cannot be put in a request path")]
    BadId,
    #[error("listing webhooks did not end: the page token repeated or more than {MAX_PAGES} pages")]
    PagesDoNotEnd,
}

/// One signing secret as the API describes it (never the secret itself).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct SigningSecret {
    #[serde(default, alias = "expireTime")]
    pub expire_time: Option<String>,
    #[serde(default, alias = "truncatedSecret")]
    pub truncated_secret: Option<String>,
}

/// A webhook resource. Every field is optional: the API is in preview.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Webhook {
    #[serde(default)]
    pub id: Option<String>,
    /// A free label (not a resource name, per the reference; see [`Webhook::id`]).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default, alias = "subscribedEvents")]
    pub subscribed_events: Vec<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default, alias = "signingSecrets")]
    pub signing_secrets: Vec<SigningSecret>,
    /// Only in `create`'s answer, once.
    #[serde(default, alias = "newSigningSecret")]
    pub new_signing_secret: Option<Redacted>,
    #[serde(default, alias = "createTime")]
    pub create_time: Option<String>,
    #[serde(default, alias = "updateTime")]
    pub update_time: Option<String>,
}

impl Webhook {
    /// The id to put in `/v1beta/webhooks/{id}`: `id`, else the last segment of a
    /// `webhooks/<id>` resource name (in case the API names resources the AIP way).
    pub fn id(&self) -> Option<&str> {
        self.id
            .as_deref()
            .map(|id| id.strip_prefix("webhooks/").unwrap_or(id))
            .filter(|id| !id.is_empty())
            .or_else(|| {
                self.name
                    .as_deref()
                    .and_then(|name| name.strip_prefix("webhooks/"))
            })
    }

    /// The state in the API's lowercase spelling, whichever case it came in
    /// (`DISABLED_DUE_TO_FAILED_DELIVERIES`, as proto enums print, reads the same).
    pub fn state(&self) -> Option<String> {
        self.state
            .as_deref()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
    }

    /// The label, unless it is the resource name.
    pub fn label(&self) -> Option<&str> {
        self.name.as_deref().filter(|n| !n.starts_with("webhooks/"))
    }
}

/// An answer: the parsed resource and the JSON as Google sent it (for `--json`).
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    pub value: T,
    pub raw: Value,
}

/// What `create` sends.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub name: Option<String>,
    pub uri: String,
    pub subscribed_events: Vec<String>,
}

/// What `update` changes: only the fields given are sent, and named in `update_mask`.
#[derive(Debug, Clone, Default)]
pub struct WebhookUpdate {
    pub name: Option<String>,
    pub uri: Option<String>,
    pub subscribed_events: Option<Vec<String>>,
    /// `enabled` or `disabled`.
    pub state: Option<&'static str>,
}

impl WebhookUpdate {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.uri.is_none()
            && self.subscribed_events.is_none()
            && self.state.is_none()
    }

    /// The body and the `update_mask` naming exactly its fields.
    pub fn body_and_mask(&self) -> (Value, String) {
        let mut body = Map::new();
        let mut mask = Vec::new();
        if let Some(name) = &self.name {
            body.insert("name".into(), json!(name));
            mask.push("name");
        }
        if let Some(uri) = &self.uri {
            body.insert("uri".into(), json!(uri));
            mask.push("uri");
        }
        if let Some(events) = &self.subscribed_events {
            body.insert("subscribed_events".into(), json!(events));
            mask.push("subscribed_events");
        }
        if let Some(state) = self.state {
            body.insert("state".into(), json!(state));
            mask.push("state");
        }
        (Value::Object(body), mask.join(","))
    }
}

/// How `rotateSigningSecret` treats the secrets it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// Old secrets stay valid for 24 hours: the zero-downtime path (the API's default).
    After24Hours,
    /// Old secrets stop verifying at once.
    Immediately,
}

impl Revocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::After24Hours => "revoke_previous_secrets_after_h24",
            Revocation::Immediately => "revoke_previous_secrets_immediately",
        }
    }
}

/// `rotateSigningSecret`'s answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RotatedSecret {
    #[serde(
        default,
        alias = "new_signing_secret",
        alias = "newSigningSecret",
        alias = "signing_secret",
        alias = "signingSecret"
    )]
    pub secret: Option<Redacted>,
}

#[derive(Debug, Default, Deserialize)]
struct Page {
    #[serde(default)]
    webhooks: Vec<Value>,
    #[serde(default, alias = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct GoogleError {
    #[serde(default)]
    error: Option<GoogleErrorBody>,
}

#[derive(Debug, Default, Deserialize)]
struct GoogleErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// The WebhookService, on a Gemini client.
#[derive(Debug, Clone)]
pub struct WebhookService {
    client: GeminiClient,
}

impl WebhookService {
    pub fn new(client: GeminiClient) -> WebhookService {
        WebhookService { client }
    }

    /// `POST /v1beta/webhooks`. The answer carries `new_signing_secret`, once.
    pub async fn create(&self, new: &NewWebhook) -> Result<Fetched<Webhook>, WebhooksError> {
        let mut body = json!({"uri": new.uri, "subscribed_events": new.subscribed_events});
        if let Some(name) = &new.name {
            body["name"] = json!(name);
        }
        let answer = self
            .client
            .call(Method::POST, "/v1beta/webhooks", Some(&body))
            .await?;
        self.parse("create", answer)
    }

    /// `GET /v1beta/webhooks`, every page.
    pub async fn list(&self) -> Result<Vec<Fetched<Webhook>>, WebhooksError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        let mut seen_tokens = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let path = list_path(token.as_deref());
            let answer = self.client.call(Method::GET, &path, None).await?;
            let page: Fetched<Page> = self.parse("list", answer)?;
            for raw in page.value.webhooks {
                let value = serde_json::from_value(raw.clone()).map_err(|source| {
                    WebhooksError::InvalidAnswer {
                        call: "list",
                        source,
                    }
                })?;
                all.push(Fetched { value, raw });
            }
            match page.value.next_page_token.filter(|t| !t.is_empty()) {
                None => return Ok(all),
                Some(next) if !seen_tokens.insert(next.clone()) => break,
                Some(next) => token = Some(next),
            }
        }
        Err(WebhooksError::PagesDoNotEnd)
    }

    /// `GET /v1beta/webhooks/{id}`.
    pub async fn get(&self, id: &str) -> Result<Fetched<Webhook>, WebhooksError> {
        let path = format!("/v1beta/webhooks/{}", checked(id)?);
        let answer = self.client.call(Method::GET, &path, None).await?;
        self.parse("get", answer)
    }

    /// `PATCH /v1beta/webhooks/{id}?update_mask=...` with only the given fields.
    pub async fn update(
        &self,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Fetched<Webhook>, WebhooksError> {
        let (body, mask) = update.body_and_mask();
        let path = format!("/v1beta/webhooks/{}?update_mask={mask}", checked(id)?);
        let answer = self.client.call(Method::PATCH, &path, Some(&body)).await?;
        self.parse("update", answer)
    }

    /// `DELETE /v1beta/webhooks/{id}`.
    pub async fn delete(&self, id: &str) -> Result<(), WebhooksError> {
        let path = format!("/v1beta/webhooks/{}", checked(id)?);
        let answer = self.client.call(Method::DELETE, &path, None).await?;
        self.expect_success(answer)
    }

    /// `POST /v1beta/webhooks/{id}:ping`, empty body.
    pub async fn ping(&self, id: &str) -> Result<(), WebhooksError> {
        let path = format!("/v1beta/webhooks/{}:ping", checked(id)?);
        let answer = self.client.call(Method::POST, &path, None).await?;
        self.expect_success(answer)
    }

    /// `POST /v1beta/webhooks/{id}:rotateSigningSecret`.
    pub async fn rotate_signing_secret(
        &self,
        id: &str,
        revocation: Revocation,
    ) -> Result<Fetched<RotatedSecret>, WebhooksError> {
        let path = format!("/v1beta/webhooks/{}:rotateSigningSecret", checked(id)?);
        let body = json!({"revocation_behavior": revocation.as_str()});
        let answer = self.client.call(Method::POST, &path, Some(&body)).await?;
        self.parse("rotateSigningSecret", answer)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        call: &'static str,
        answer: ApiAnswer,
    ) -> Result<Fetched<T>, WebhooksError> {
        let answer = self.success(answer)?;
        // An empty 200 reads as an empty object: every field is optional.
        let raw: Value = if answer.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&answer.body)
                .map_err(|source| WebhooksError::InvalidAnswer { call, source })?
        };
        let value = serde_json::from_value(raw.clone())
            .map_err(|source| WebhooksError::InvalidAnswer { call, source })?;
        Ok(Fetched { value, raw })
    }

    fn expect_success(&self, answer: ApiAnswer) -> Result<(), WebhooksError> {
        self.success(answer).map(|_| ())
    }

    /// The answer if 2xx, else Google's error with the key redacted from its message.
    fn success(&self, answer: ApiAnswer) -> Result<ApiAnswer, WebhooksError> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        if answer.status.is_redirection() {
            // Not followed: the key goes to the API's origin only, and the API answers in place.
            return Err(WebhooksError::Api {
                status: answer.status.as_u16(),
                google_status: None,
                message:
                    "a redirect, not followed (the API key is sent to the Gemini base URL only)"
                        .to_owned(),
            });
        }
        let parsed: GoogleError = serde_json::from_slice(&answer.body).unwrap_or_default();
        let (message, google_status) = match parsed.error {
            Some(error) => (error.message, error.status),
            None => (None, None),
        };
        let message = message.unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&answer.body);
            let excerpt: String = text.chars().take(ERROR_EXCERPT_CHARS).collect();
            if excerpt.trim().is_empty() {
                "(no message)".to_owned()
            } else {
                excerpt
            }
        });
        Err(WebhooksError::Api {
            status: answer.status.as_u16(),
            google_status,
            message: self.client.redact(&message),
        })
    }
}

/// `/v1beta/webhooks?page_size=..[&page_token=..]`, the token URL-encoded.
fn list_path(token: Option<&str>) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("page_size", &PAGE_SIZE.to_string());
    if let Some(token) = token {
        query.append_pair("page_token", token);
    }
    format!("/v1beta/webhooks?{}", query.finish())
}

fn checked(id: &str) -> Result<&str, WebhooksError> {
    let id = id.trim();
    let id = id.strip_prefix("webhooks/").unwrap_or(id);
    if is_safe_id(id) {
        Ok(id)
    } else {
        Err(WebhooksError::BadId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_reads_both_spellings_and_either_case_of_its_state() {
        let snake: Webhook = serde_json::from_value(json!({
            "id": "wh_1", "uri": "https://h/x", "subscribed_events": ["batch.succeeded"],
            "state": "disabled_due_to_failed_deliveries",
            "signing_secrets": [{"expire_time": "2026-01-01T00:00:00Z", "truncated_secret": "whsec_ab…"}],
            "new_signing_secret": "whsec_new", "create_time": "t"
        }))
        .unwrap();
        let camel: Webhook = serde_json::from_value(json!({
            "id": "wh_1", "uri": "https://h/x", "subscribedEvents": ["batch.succeeded"],
            "state": "DISABLED_DUE_TO_FAILED_DELIVERIES",
            "signingSecrets": [{"expireTime": "2026-01-01T00:00:00Z", "truncatedSecret": "whsec_ab…"}],
            "newSigningSecret": "whsec_new", "createTime": "t", "unknownField": 1
        }))
        .unwrap();
        for webhook in [&snake, &camel] {
            assert_eq!(webhook.id(), Some("wh_1"));
            assert_eq!(webhook.subscribed_events, ["batch.succeeded"]);
            assert_eq!(
                webhook.state().as_deref(),
                Some("disabled_due_to_failed_deliveries")
            );
            assert_eq!(
                webhook.signing_secrets[0].truncated_secret.as_deref(),
                Some("whsec_ab…")
            );
            assert_eq!(
                webhook.new_signing_secret.as_ref().map(Redacted::expose),
                Some("whsec_new")
            );
            assert_eq!(webhook.create_time.as_deref(), Some("t"));
            assert!(!format!("{webhook:?}").contains("whsec_new"));
        }
    }

    #[test]
    fn a_webhook_without_an_id_is_named_by_its_resource_name() {
        let webhook: Webhook = serde_json::from_value(json!({"name": "webhooks/abc"})).unwrap();
        assert_eq!(webhook.id(), Some("abc"));
        assert_eq!(webhook.label(), None);
    }

    #[test]
    fn an_update_sends_only_what_is_given_with_the_matching_mask() {
        let update = WebhookUpdate {
            uri: Some("https://h/new".into()),
            state: Some("enabled"),
            ..WebhookUpdate::default()
        };
        let (body, mask) = update.body_and_mask();
        assert_eq!(body, json!({"uri": "https://h/new", "state": "enabled"}));
        assert_eq!(mask, "uri,state");
        assert!(WebhookUpdate::default().is_empty());
    }

    #[test]
    fn a_rotated_secret_is_read_under_any_of_its_names() {
        for body in [
            json!({"secret": "whsec_r"}),
            json!({"newSigningSecret": "whsec_r"}),
            json!({"new_signing_secret": "whsec_r"}),
        ] {
            let rotated: RotatedSecret = serde_json::from_value(body).unwrap();
            assert_eq!(
                rotated.secret.as_ref().map(Redacted::expose),
                Some("whsec_r")
            );
        }
    }

    #[test]
    fn ids_that_would_change_the_path_are_refused() {
        assert_eq!(checked("webhooks/wh_1").unwrap(), "wh_1");
        for id in ["", "a/b", "../x", "a?update_mask=state", "a:ping"] {
            assert!(checked(id).is_err(), "{id}");
        }
    }
}
