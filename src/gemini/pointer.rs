//! What an event asks the worker to do: the stored body → a [`Plan`].
//!
//! Pure, and defensive: Gemini's payloads are only partly documented (see "Unconfirmed" in
//! `../shared/gemini-webhooks.md`), so every field is optional, both snake_case and camelCase
//! spellings are read, and nothing here fails or panics. A body we cannot act on yields
//! [`Work::Nothing`] (nothing to do) or [`Work::NotFollowable`] (something to do that we must
//! not or cannot do, with the reason an operator will read).
//!
//! Identifiers that end up in a URL path are checked against a small alphabet
//! ([`is_safe_id`]), so a payload can never steer a request to another path of the API.

use serde_json::{Map, Value};
use url::Url;

use super::origin::{AllowedOrigins, display_origin};

/// The host Gemini's own pointers name, whatever base URL we are configured with.
const GEMINI_HOST: &str = "generativelanguage.googleapis.com";

/// Longest identifier we accept; real ones are far shorter.
const MAX_ID_LEN: usize = 256;

/// What the worker must do for one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// `GET {base}/download/v1beta/files/{file_id}:download?alt=media` and store the body.
    DownloadFile { file_id: String },
    /// GET this URL (on an allowed origin, checked) and store the body.
    DownloadUrl { url: Url },
    /// Read `gs://{bucket}/{object}` with Google Cloud Storage credentials (only produced when
    /// the operator configured GCS access; never with the Gemini key).
    DownloadGcs { bucket: String, object: String },
    /// `GET {base}/v1beta/interactions/{id}` and store the JSON.
    FetchInteraction { id: String },
    /// A `batch.succeeded` that names no results file: `GET {base}/v1beta/batches/{id}` and
    /// follow what the batch says (a results file, or inline responses).
    LookUpBatch { id: String },
    /// A terminal failure, expiry or cancellation: record it, nothing to fetch.
    Record {
        error_code: Option<String>,
        error_message: Option<String>,
    },
    /// Something to fetch that we must not or cannot fetch: discard with this reason.
    NotFollowable { reason: Unfollowable },
    /// An unknown or unparseable event: done, nothing to do.
    Nothing,
}

/// Why a pointer is not followed. The text is meant for an operator and never includes a
/// pointer's path or query (signed URLs carry tokens there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfollowable {
    #[error("the event has no {expected} to follow")]
    MissingPointer { expected: &'static str },
    #[error("the event has no resource id to fetch")]
    MissingId,
    #[error("the resource id has characters that cannot be put in a request path")]
    MalformedId,
    #[error("the pointer is not a URL or file name we understand")]
    MalformedUri,
    #[error("a gs:// pointer needs Google Cloud Storage access, which is not configured")]
    GcsNotConfigured,
    #[error("the pointer names {origin}, which is neither the Gemini base URL nor an allowed host")]
    HostNotAllowed { origin: String },
    #[error("the pointer's scheme {scheme:?} is not supported")]
    UnsupportedScheme { scheme: String },
}

/// The family of resource an event is about; it decides where results are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Batch,
    Interaction,
    Video,
    Other,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Batch => "batch",
            ResourceKind::Interaction => "interaction",
            ResourceKind::Video => "video",
            ResourceKind::Other => "other",
        }
    }

    fn of(event_type: &str) -> ResourceKind {
        match event_type.split('.').next() {
            Some("batch") => ResourceKind::Batch,
            Some("interaction") => ResourceKind::Interaction,
            Some("video") => ResourceKind::Video,
            _ => ResourceKind::Other,
        }
    }
}

/// Everything the worker needs from an event body.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub event_type: Option<String>,
    pub kind: ResourceKind,
    /// `data.id`, else `data.name`, as sent (`batch_123`, `batches/123`, `v1_Chd…`).
    pub resource_id: Option<String>,
    /// The `user_metadata` echoed from `webhook_config`, at the top level or in `data`.
    pub user_metadata: Option<Value>,
    pub work: Work,
}

/// What the operator configured that decides whether a pointer may be followed.
#[derive(Debug, Clone)]
pub struct PointerPolicy {
    pub allowed: AllowedOrigins,
    /// Whether Google Cloud Storage access is configured for `gs://` pointers.
    pub follow_gcs: bool,
}

/// Reads a stored event body. Never fails.
pub fn plan(body: &[u8], policy: &PointerPolicy) -> Plan {
    let nothing = Plan {
        event_type: None,
        kind: ResourceKind::Other,
        resource_id: None,
        user_metadata: None,
        work: Work::Nothing,
    };
    let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(body) else {
        return nothing;
    };
    let Some(event_type) = root
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return nothing;
    };
    let empty = Map::new();
    let data = root
        .get("data")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let resource_id = text_field(data, &["id", "name"]);
    let user_metadata = field(&root, &["user_metadata", "userMetadata"])
        .or_else(|| field(data, &["user_metadata", "userMetadata"]))
        .filter(|value| !value.is_null())
        .cloned();
    let work = match event_type {
        "batch.succeeded" => match first_text(
            data,
            &[
                "output_file_uri",
                "outputFileUri",
                "responses_file",
                "responsesFile",
            ],
        ) {
            Some(uri) => follow_file(Some(uri), "output_file_uri", policy),
            // The batch itself says where its results are.
            None => look_up_batch(resource_id.as_deref()),
        },
        "video.generated" => {
            let uri = first_text(
                data,
                &["output_file_uri", "outputFileUri", "video_uri", "videoUri"],
            )
            // `file_name` is in the catalogue but undescribed: used only when it is plainly
            // a file resource name.
            .or_else(|| {
                first_text(data, &["file_name", "fileName"])
                    .filter(|name| name.starts_with("files/"))
            });
            follow_file(uri, "output_file_uri or video_uri", policy)
        }
        "interaction.completed" | "interaction.requires_action" => {
            fetch_interaction(resource_id.as_deref())
        }
        other if is_terminal_failure(other) => Work::Record {
            error_code: error_code(data),
            error_message: error_message(data),
        },
        _ => Work::Nothing,
    };
    Plan {
        event_type: Some(event_type.to_owned()),
        kind: ResourceKind::of(event_type),
        resource_id,
        user_metadata,
        work,
    }
}

/// Whether an identifier may be put in a request path as one segment: letters, digits and
/// `_ - . = ~`, not `.` or `..`, at most 256 bytes.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'=' | b'~'))
}

fn is_terminal_failure(event_type: &str) -> bool {
    // Any family: `video.failed` is not in the catalogue but would mean the same thing. Both
    // spellings of "cancelled", since Google's APIs use each in places.
    [".failed", ".expired", ".cancelled", ".canceled"]
        .iter()
        .any(|suffix| event_type.ends_with(suffix))
}

fn fetch_interaction(resource_id: Option<&str>) -> Work {
    let Some(raw) = resource_id.map(str::trim).filter(|id| !id.is_empty()) else {
        return Work::NotFollowable {
            reason: Unfollowable::MissingId,
        };
    };
    let id = raw.strip_prefix("interactions/").unwrap_or(raw);
    if is_safe_id(id) {
        Work::FetchInteraction { id: id.to_owned() }
    } else {
        Work::NotFollowable {
            reason: Unfollowable::MalformedId,
        }
    }
}

fn look_up_batch(resource_id: Option<&str>) -> Work {
    let Some(raw) = resource_id.map(str::trim).filter(|id| !id.is_empty()) else {
        return Work::NotFollowable {
            reason: Unfollowable::MissingPointer {
                expected: "output_file_uri or a batch id",
            },
        };
    };
    let id = raw.strip_prefix("batches/").unwrap_or(raw);
    if is_safe_id(id) {
        Work::LookUpBatch { id: id.to_owned() }
    } else {
        Work::NotFollowable {
            reason: Unfollowable::MalformedId,
        }
    }
}

/// What a batch's `responsesFile` asks for: the same classification as an event's pointer
/// (a Gemini file, an allowed URL, `gs://`), so a batch cannot point the key elsewhere either.
pub fn results_file(uri: &str, policy: &PointerPolicy) -> Work {
    follow_file(Some(uri.to_owned()), "responsesFile", policy)
}

/// Classifies a file pointer: a Gemini file name or URL, another allowed URL, or `gs://`.
fn follow_file(uri: Option<String>, expected: &'static str, policy: &PointerPolicy) -> Work {
    let not = |reason| Work::NotFollowable { reason };
    let Some(uri) = uri else {
        return not(Unfollowable::MissingPointer { expected });
    };
    let uri = uri.trim();
    if let Some(rest) = strip_prefix_ignore_case(uri, "gs://") {
        return match rest.split_once('/') {
            _ if !policy.follow_gcs => not(Unfollowable::GcsNotConfigured),
            Some((bucket, object)) if !bucket.is_empty() && !object.is_empty() => {
                Work::DownloadGcs {
                    bucket: bucket.to_owned(),
                    object: object.to_owned(),
                }
            }
            _ => not(Unfollowable::MalformedUri),
        };
    }
    if !uri.contains("://") {
        // A resource name or a path relative to the API: `files/<id>`,
        // `download/v1beta/files/<id>:download?alt=media`, `/v1beta/files/<id>`.
        let path = uri.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        return match file_id_from_segments(&segments) {
            Some(Ok(file_id)) => Work::DownloadFile { file_id },
            Some(Err(reason)) => not(reason),
            None => not(Unfollowable::MalformedUri),
        };
    }
    let Ok(url) = Url::parse(uri) else {
        return not(Unfollowable::MalformedUri);
    };
    if !matches!(url.scheme(), "http" | "https") {
        return not(Unfollowable::UnsupportedScheme {
            scheme: url.scheme().to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return not(Unfollowable::MalformedUri);
    }
    let names_gemini = (url.scheme() == "https" && url.host_str() == Some(GEMINI_HOST))
        || policy.allowed.is_base(&url);
    if names_gemini {
        let segments: Vec<&str> = url
            .path_segments()
            .map(Iterator::collect)
            .unwrap_or_default();
        match file_id_from_segments(&segments) {
            // Fetched from our own base URL: the file id is what matters, not who named it.
            Some(Ok(file_id)) => return Work::DownloadFile { file_id },
            Some(Err(reason)) => return not(reason),
            None => {}
        }
    }
    if policy.allowed.allows(&url) {
        Work::DownloadUrl { url }
    } else {
        not(Unfollowable::HostNotAllowed {
            origin: display_origin(&url),
        })
    }
}

/// `[..., "files", "<id>[:download]"]` → the id. `None` when the path is not a file path,
/// `Some(Err)` when it is one with an id we will not put in a URL.
fn file_id_from_segments(segments: &[&str]) -> Option<Result<String, Unfollowable>> {
    let [.., "files", last] = segments else {
        return None;
    };
    let id = match last.split_once(':') {
        Some((id, "download")) => id,
        Some(_) => return None,
        None => last,
    };
    Some(if is_safe_id(id) {
        Ok(id.to_owned())
    } else {
        Err(Unfollowable::MalformedId)
    })
}

fn error_code(data: &Map<String, Value>) -> Option<String> {
    text_field(data, &["error_code", "errorCode"]).or_else(|| {
        data.get("error")
            .and_then(Value::as_object)
            .and_then(|error| text_field(error, &["code", "status"]))
    })
}

fn error_message(data: &Map<String, Value>) -> Option<String> {
    first_text(data, &["error_message", "errorMessage"]).or_else(|| match data.get("error") {
        Some(Value::Object(error)) => first_text(error, &["message"]),
        // Some producers may send the error as a bare string.
        Some(Value::String(message)) if !message.is_empty() => Some(message.clone()),
        _ => None,
    })
}

/// The first present, non-null value among `names`.
fn field<'a>(object: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .filter_map(|name| object.get(*name))
        .find(|value| !value.is_null())
}

/// The first non-empty string among `names`.
fn first_text(object: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| object.get(*name).and_then(Value::as_str))
        .find(|text| !text.trim().is_empty())
        .map(str::to_owned)
}

/// The first non-empty string or number among `names` (numbers as their decimal text).
fn text_field(object: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match object.get(*name) {
        Some(Value::String(text)) if !text.trim().is_empty() => Some(text.clone()),
        Some(Value::Number(number)) => Some(number.to_string()),
        _ => None,
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> PointerPolicy {
        policy_with(&["videos.example"], false)
    }

    fn policy_with(extra: &[&str], follow_gcs: bool) -> PointerPolicy {
        let base = Url::parse("https://generativelanguage.googleapis.com").unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        PointerPolicy {
            allowed: AllowedOrigins::new(&base, &extra).unwrap(),
            follow_gcs,
        }
    }

    fn plan_json(body: Value) -> Plan {
        plan(body.to_string().as_bytes(), &policy())
    }

    fn work_for(event_type: &str, data: Value) -> Work {
        plan_json(json!({"type": event_type, "data": data})).work
    }

    fn file(id: &str) -> Work {
        Work::DownloadFile {
            file_id: id.to_owned(),
        }
    }

    fn unfollowable(reason: Unfollowable) -> Work {
        Work::NotFollowable { reason }
    }

    #[test]
    fn batch_succeeded_with_a_file_name_downloads_that_file() {
        let plan = plan_json(json!({
            "type": "batch.succeeded", "version": "v1", "timestamp": "2026-01-22T12:00:00Z",
            "data": {"id": "batch_123456", "output_file_uri": "files/abc-123"}
        }));
        assert_eq!(plan.work, file("abc-123"));
        assert_eq!(plan.kind, ResourceKind::Batch);
        assert_eq!(plan.resource_id.as_deref(), Some("batch_123456"));
        assert_eq!(plan.event_type.as_deref(), Some("batch.succeeded"));
    }

    #[test]
    fn every_gemini_file_url_shape_becomes_a_file_download() {
        for uri in [
            "files/abc123",
            "/files/abc123",
            "v1beta/files/abc123",
            "download/v1beta/files/abc123:download?alt=media",
            "files/abc123:download",
            "https://generativelanguage.googleapis.com/v1beta/files/abc123",
            "https://generativelanguage.googleapis.com/v1beta/files/abc123:download?alt=media",
            "https://generativelanguage.googleapis.com/download/v1beta/files/abc123:download?alt=media",
            "https://generativelanguage.googleapis.com/v1/files/abc123?key=ignored",
            "  files/abc123\n",
        ] {
            assert_eq!(
                work_for(
                    "batch.succeeded",
                    json!({"id": "b", "output_file_uri": uri})
                ),
                file("abc123"),
                "{uri}"
            );
        }
    }

    #[test]
    fn a_file_url_on_the_configured_base_origin_is_a_file_download() {
        let base = Url::parse("http://127.0.0.1:4010").unwrap();
        let policy = PointerPolicy {
            allowed: AllowedOrigins::new(&base, &[]).unwrap(),
            follow_gcs: false,
        };
        let body = json!({"type": "batch.succeeded",
            "data": {"id": "b", "output_file_uri": "http://127.0.0.1:4010/v1beta/files/f1"}});
        assert_eq!(plan(body.to_string().as_bytes(), &policy).work, file("f1"));
    }

    #[test]
    fn camel_case_and_responses_file_spellings_are_read() {
        assert_eq!(
            work_for("batch.succeeded", json!({"outputFileUri": "files/a"})),
            file("a")
        );
        assert_eq!(
            work_for("batch.succeeded", json!({"responsesFile": "files/b"})),
            file("b")
        );
    }

    #[test]
    fn a_gs_pointer_is_not_followable_without_gcs_access() {
        let body =
            br#"{"type": "batch.succeeded", "version": "v1", "timestamp": "2026-01-22T12:00:00Z",
 "data": {"id": "batch_123456", "output_file_uri": "gs://my-bucket/results.jsonl"}}"#;
        assert_eq!(
            plan(body, &policy()).work,
            unfollowable(Unfollowable::GcsNotConfigured)
        );
        assert_eq!(
            plan(body, &policy_with(&[], true)).work,
            Work::DownloadGcs {
                bucket: "my-bucket".into(),
                object: "results.jsonl".into()
            }
        );
        let no_object = json!({"type": "batch.succeeded", "data": {"output_file_uri": "gs://b"}});
        assert_eq!(
            plan(no_object.to_string().as_bytes(), &policy_with(&[], true)).work,
            unfollowable(Unfollowable::MalformedUri)
        );
    }

    #[test]
    fn a_batch_succeeded_without_a_pointer_looks_the_batch_up_by_its_id() {
        for id in ["batch_1", "batches/batch_1"] {
            assert_eq!(
                work_for("batch.succeeded", json!({"id": id})),
                Work::LookUpBatch {
                    id: "batch_1".into()
                }
            );
        }
        assert_eq!(
            work_for(
                "batch.succeeded",
                json!({"name": "batches/b2", "output_file_uri": 7})
            ),
            Work::LookUpBatch { id: "b2".into() }
        );
        assert_eq!(
            work_for("batch.succeeded", json!({"id": "../files/x"})),
            unfollowable(Unfollowable::MalformedId)
        );
    }

    #[test]
    fn a_missing_pointer_and_id_is_not_followable() {
        let missing = unfollowable(Unfollowable::MissingPointer {
            expected: "output_file_uri or a batch id",
        });
        assert_eq!(plan_json(json!({"type": "batch.succeeded"})).work, missing);
        assert_eq!(
            work_for("batch.succeeded", json!({"output_file_uri": 7})),
            missing
        );
    }

    #[test]
    fn a_batch_results_file_is_classified_like_an_event_pointer() {
        assert_eq!(results_file("files/r1", &policy()), file("r1"));
        assert_eq!(
            results_file("https://evil.example/x", &policy()),
            unfollowable(Unfollowable::HostNotAllowed {
                origin: "https://evil.example".into()
            })
        );
        assert_eq!(
            results_file("gs://b/o.jsonl", &policy_with(&[], true)),
            Work::DownloadGcs {
                bucket: "b".into(),
                object: "o.jsonl".into()
            }
        );
    }

    #[test]
    fn a_pointer_to_a_foreign_host_is_not_followable_and_names_only_the_origin() {
        let work = work_for(
            "video.generated",
            json!({"id": "v", "video_uri": "https://evil.example:8443/steal?token=t"}),
        );
        assert_eq!(
            work,
            unfollowable(Unfollowable::HostNotAllowed {
                origin: "https://evil.example:8443".into()
            })
        );
        let Work::NotFollowable { reason } = work else {
            unreachable!()
        };
        assert!(!reason.to_string().contains("token"));
    }

    #[test]
    fn a_gemini_host_over_plain_http_is_not_allowed() {
        assert_eq!(
            work_for(
                "video.generated",
                json!({"video_uri": "http://generativelanguage.googleapis.com/v1beta/files/a"})
            ),
            unfollowable(Unfollowable::HostNotAllowed {
                origin: "http://generativelanguage.googleapis.com".into()
            })
        );
    }

    #[test]
    fn other_paths_on_allowed_hosts_are_url_downloads() {
        let url = "https://videos.example/v/abc.mp4?sig=1";
        assert_eq!(
            work_for("video.generated", json!({"id": "v", "video_uri": url})),
            Work::DownloadUrl {
                url: Url::parse(url).unwrap()
            }
        );
        let gemini = "https://generativelanguage.googleapis.com/v1beta/operations/x";
        assert_eq!(
            work_for("video.generated", json!({"output_file_uri": gemini})),
            Work::DownloadUrl {
                url: Url::parse(gemini).unwrap()
            }
        );
    }

    #[test]
    fn unusable_uris_are_not_followable() {
        for (uri, reason) in [
            (
                "ftp://videos.example/a",
                Unfollowable::UnsupportedScheme {
                    scheme: "ftp".into(),
                },
            ),
            ("https://u:p@videos.example/a", Unfollowable::MalformedUri),
            ("https://", Unfollowable::MalformedUri),
            ("results.jsonl", Unfollowable::MalformedUri),
            ("files/", Unfollowable::MalformedId),
            ("files/..", Unfollowable::MalformedId),
            ("files/a%2Fb", Unfollowable::MalformedId),
            ("files/a:delete", Unfollowable::MalformedUri),
        ] {
            assert_eq!(
                work_for("batch.succeeded", json!({"output_file_uri": uri})),
                unfollowable(reason),
                "{uri}"
            );
        }
    }

    #[test]
    fn video_generated_reads_output_file_uri_then_video_uri_then_file_name() {
        let plan = plan_json(json!({"type": "video.generated",
            "data": {"id": "vid_1", "output_file_uri": "files/v1", "video_uri": "files/v2"}}));
        assert_eq!(plan.work, file("v1"));
        assert_eq!(plan.kind, ResourceKind::Video);
        assert_eq!(
            work_for("video.generated", json!({"video_uri": "files/v2"})),
            file("v2")
        );
        assert_eq!(
            work_for("video.generated", json!({"videoUri": "files/v3"})),
            file("v3")
        );
        assert_eq!(
            work_for("video.generated", json!({"file_name": "files/v4"})),
            file("v4")
        );
        assert_eq!(
            work_for("video.generated", json!({"file_name": "clip.mp4"})),
            unfollowable(Unfollowable::MissingPointer {
                expected: "output_file_uri or video_uri"
            })
        );
    }

    #[test]
    fn interaction_events_fetch_the_interaction_by_id_or_name() {
        for event_type in ["interaction.completed", "interaction.requires_action"] {
            let plan = plan_json(json!({"type": event_type, "data": {"id": "v1_ChdBbc-_x"}}));
            assert_eq!(
                plan.work,
                Work::FetchInteraction {
                    id: "v1_ChdBbc-_x".into()
                }
            );
            assert_eq!(plan.kind, ResourceKind::Interaction);
        }
        assert_eq!(
            work_for(
                "interaction.completed",
                json!({"name": "interactions/v1_Chd9"})
            ),
            Work::FetchInteraction {
                id: "v1_Chd9".into()
            }
        );
        assert_eq!(
            work_for("interaction.completed", json!({"id": 42})),
            Work::FetchInteraction { id: "42".into() }
        );
    }

    #[test]
    fn an_interaction_without_a_usable_id_is_not_followable() {
        assert_eq!(
            work_for("interaction.completed", json!({})),
            unfollowable(Unfollowable::MissingId)
        );
        assert_eq!(
            work_for("interaction.requires_action", json!({"id": "../batches/x"})),
            unfollowable(Unfollowable::MalformedId)
        );
        assert_eq!(
            work_for("interaction.completed", json!({"id": "a b"})),
            unfollowable(Unfollowable::MalformedId)
        );
    }

    #[test]
    fn failures_are_recorded_with_a_numeric_or_string_code() {
        for event_type in ["batch.failed", "interaction.failed"] {
            assert_eq!(
                work_for(
                    event_type,
                    json!({"id": "x", "error_code": 13, "error_message": "internal"})
                ),
                Work::Record {
                    error_code: Some("13".into()),
                    error_message: Some("internal".into())
                }
            );
            assert_eq!(
                work_for(
                    event_type,
                    json!({"id": "x", "error_code": "RESOURCE_EXHAUSTED"})
                ),
                Work::Record {
                    error_code: Some("RESOURCE_EXHAUSTED".into()),
                    error_message: None
                }
            );
        }
        assert_eq!(
            work_for(
                "batch.failed",
                json!({"error": {"code": 400, "message": "bad input"}})
            ),
            Work::Record {
                error_code: Some("400".into()),
                error_message: Some("bad input".into())
            }
        );
        assert_eq!(
            work_for("batch.failed", json!({"errorCode": 9, "errorMessage": "m"})),
            Work::Record {
                error_code: Some("9".into()),
                error_message: Some("m".into())
            }
        );
    }

    #[test]
    fn expiries_and_cancellations_are_recorded_without_an_error() {
        for event_type in [
            "batch.expired",
            "batch.cancelled",
            "interaction.cancelled",
            "video.failed",
            "batch.canceled",
        ] {
            assert_eq!(
                work_for(event_type, json!({"id": "x"})),
                Work::Record {
                    error_code: None,
                    error_message: None
                },
                "{event_type}"
            );
        }
        assert_eq!(
            plan_json(json!({"type": "batch.expired"})).work,
            Work::Record {
                error_code: None,
                error_message: None
            }
        );
    }

    #[test]
    fn unknown_and_unparseable_events_ask_for_nothing() {
        let unknown = plan_json(json!({"type": "model.tuned", "data": {"id": "t1"}}));
        assert_eq!(unknown.work, Work::Nothing);
        assert_eq!(unknown.kind, ResourceKind::Other);
        assert_eq!(unknown.resource_id.as_deref(), Some("t1"));
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            b"{\"type\":7}",
            b"{\"type\":\"\"}",
            b"",
            b"{\"type\":\"batch.succeeded\"",
            b"\xff\xfe",
        ] {
            let plan = plan(body, &policy());
            assert_eq!(plan.work, Work::Nothing, "{body:?}");
            assert_eq!(plan.event_type, None);
        }
    }

    #[test]
    fn data_that_is_not_an_object_is_treated_as_empty() {
        assert_eq!(
            plan_json(json!({"type": "batch.succeeded", "data": "files/a"})).work,
            unfollowable(Unfollowable::MissingPointer {
                expected: "output_file_uri or a batch id"
            })
        );
    }

    #[test]
    fn user_metadata_is_read_from_the_top_level_first_then_from_data() {
        let top = plan_json(
            json!({"type": "batch.failed", "user_metadata": {"job": "a"},
            "data": {"user_metadata": {"job": "b"}}}),
        );
        assert_eq!(top.user_metadata, Some(json!({"job": "a"})));
        let nested = plan_json(json!({"type": "batch.failed", "user_metadata": null,
            "data": {"userMetadata": {"job": "b"}}}));
        assert_eq!(nested.user_metadata, Some(json!({"job": "b"})));
        let none = plan_json(json!({"type": "batch.failed", "data": {}}));
        assert_eq!(none.user_metadata, None);
    }

    #[test]
    fn the_resource_id_prefers_id_over_name_and_keeps_it_as_sent() {
        let plan = plan_json(json!({"type": "batch.expired",
            "data": {"id": "batches/123", "name": "other"}}));
        assert_eq!(plan.resource_id.as_deref(), Some("batches/123"));
        let by_name = plan_json(json!({"type": "batch.expired", "data": {"id": "", "name": "n"}}));
        assert_eq!(by_name.resource_id.as_deref(), Some("n"));
    }

    #[test]
    fn safe_ids_are_limited_to_a_path_segment_alphabet() {
        assert!(is_safe_id("v1_ChdBbc-_x=="));
        assert!(is_safe_id("abc.def"));
        for id in ["", ".", "..", "a/b", "a?b", "a#b", "a%2e", "a b", "é"] {
            assert!(!is_safe_id(id), "{id}");
        }
        assert!(!is_safe_id(&"a".repeat(MAX_ID_LEN + 1)));
    }
}
