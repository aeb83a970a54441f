//! Pure: what a finished job tells the user's application, as one [`Outcome`] per event.
//!
//! An outcome is built once, when the event's job is completed or discarded, from what the
//! worker already has: the event's type and `webhook-id`, the [`JobResult`] (locations, sizes,
//! the batch summary, the interaction status, Gemini's error), the event's [`Plan`] (for the
//! resource id and `user_metadata` when a discarded job left no result) and the last error.
//! Every sink then sends the same outcome; only the inline interaction JSON is cut per sink
//! ([`Outcome::encode`]), because each sink has its own size limit.
//!
//! The JSON shape is the contract with the application, so it never skips a field: absent
//! values are `null`, and `version` says which shape this is.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::gemini::Plan;
use crate::store::JobResult;

/// The shape of [`Outcome`]'s JSON; raised when a field changes meaning or disappears.
pub const OUTCOME_VERSION: u32 = 1;

/// The event type of an outcome whose event had none (an unreadable body).
pub const UNKNOWN_TYPE: &str = "unknown";

/// Hex digits of the hash kept in a delivery id: 128 bits, far beyond any collision risk for
/// the number of deliveries one installation makes.
const DELIVERY_ID_HEX_LEN: usize = 32;

/// What the application receives about one event, once gemhook is done with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// [`OUTCOME_VERSION`].
    pub version: u32,
    /// The original Gemini `webhook-id` of the event.
    pub webhook_id: String,
    /// The event type (`batch.succeeded`, ...), or [`UNKNOWN_TYPE`]. Named `type` in JSON, like
    /// Gemini's envelope and gemhook's other JSON.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `batch`, `interaction`, `video` or `other`.
    pub resource_kind: String,
    /// Gemini's id of the resource, as sent (`batches/123`, `v1_Chd…`).
    pub resource_id: Option<String>,
    pub state: OutcomeState,
    /// The `user_metadata` echoed from the job's `webhook_config`.
    pub user_metadata: Option<Value>,
    pub result: OutcomeResult,
    /// Gemini's error for `*.failed`, or why gemhook gave up on the event.
    pub error: Option<OutcomeError>,
    pub finished_at: DateTime<Utc>,
}

/// How the event's job ended, in the job states' own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeState {
    /// The pointer was followed (or there was nothing to follow); `result` says what came of it.
    Completed,
    /// gemhook gave up (dead letter); `error` says why.
    Discarded,
}

impl OutcomeState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeState::Completed => "completed",
            OutcomeState::Discarded => "discarded",
        }
    }
}

/// What following the pointer produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutcomeResult {
    /// `stored`, `recorded`, `nothing` or `not_followable`; `None` when a discarded job left
    /// no result.
    pub outcome: Option<String>,
    /// Where the result is stored (batch results file, video, interaction JSON).
    pub location: Option<String>,
    pub size_bytes: Option<i64>,
    /// Hex SHA-256 of the stored bytes, so the application can check what it reads.
    pub sha256: Option<String>,
    /// Batch results: lines in the results file, and how many of them are errors.
    pub lines: Option<u64>,
    pub error_lines: Option<u64>,
    /// The interaction's `status` (`completed`, `requires_action`, ...).
    pub interaction_status: Option<String>,
    /// The interaction JSON itself, when it is small enough for the sink; otherwise read it
    /// from `location`.
    pub inline: Option<Value>,
}

/// Who reported the error of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorOrigin {
    /// Gemini's own `error_code` / `error_message` (`batch.failed`, `interaction.failed`).
    Gemini,
    /// gemhook could not finish the job (it was discarded).
    Gemhook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeError {
    pub origin: ErrorOrigin,
    /// Gemini's `error_code` as text (it is sent as a number or a string), or gemhook's
    /// [`DISCARD_NOT_FOLLOWABLE`] / [`DISCARD_FAILED`].
    pub code: Option<String>,
    pub message: Option<String>,
}

/// Error code of a discarded outcome whose pointer gemhook must not or cannot follow.
pub const DISCARD_NOT_FOLLOWABLE: &str = "not_followable";
/// Error code of a discarded outcome whose attempts all failed.
pub const DISCARD_FAILED: &str = "failed";

/// Everything [`build`] reads. Borrowed from the worker's finished job; only the inline JSON is
/// owned, since it was just read from the results store for this purpose.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub webhook_id: &'a str,
    pub event_type: Option<&'a str>,
    pub state: OutcomeState,
    /// The job's result: always there when completed, sometimes when discarded.
    pub result: Option<&'a JobResult>,
    /// The event's plan: where the resource id and `user_metadata` come from when there is no
    /// result.
    pub plan: Option<&'a Plan>,
    /// The last attempt's error (the discard reason).
    pub last_error: Option<&'a str>,
    /// The stored interaction JSON, when the caller read it to send inline.
    pub inline: Option<Value>,
    /// Larger inline JSON is dropped here already (see [`super::SinkSet::max_inline_bytes`]);
    /// each sink may cut it further.
    pub inline_max_bytes: usize,
    pub finished_at: DateTime<Utc>,
}

/// Builds the outcome of a finished job.
pub fn build(finished: Finished<'_>) -> Outcome {
    let Finished {
        webhook_id,
        event_type,
        state,
        result,
        plan,
        last_error,
        inline,
        inline_max_bytes,
        finished_at,
    } = finished;
    let event_type = event_type
        .or_else(|| plan.and_then(|p| p.event_type.as_deref()))
        .unwrap_or(UNKNOWN_TYPE);
    let summary = result.map(|r| &r.summary);
    let text = |key: &str| summary.and_then(|s| s.get(key)).and_then(scalar_text);
    let count = |key: &str| summary.and_then(|s| s.get(key)).and_then(Value::as_u64);

    let resource_kind = match (result, plan) {
        (Some(result), _) => result.resource_kind,
        (None, Some(plan)) => plan.kind.as_str(),
        (None, None) => kind_of(event_type),
    };
    let resource_id = result
        .and_then(|r| r.resource_id.clone())
        .or_else(|| plan.and_then(|p| p.resource_id.clone()));
    let user_metadata = summary
        .and_then(|s| s.get("user_metadata"))
        .or_else(|| plan.and_then(|p| p.user_metadata.as_ref()))
        .filter(|value| !value.is_null())
        .cloned();

    // Inline JSON only makes sense beside a stored result, and only when it fits.
    let inline = inline
        .filter(|_| state == OutcomeState::Completed)
        .filter(|value| fits(value, inline_max_bytes));

    let gemini_code = text("error_code");
    let gemini_message = text("error_message");
    let error = if gemini_code.is_some() || gemini_message.is_some() {
        Some(OutcomeError {
            origin: ErrorOrigin::Gemini,
            code: gemini_code.map(Cow::into_owned),
            message: gemini_message.map(Cow::into_owned),
        })
    } else if state == OutcomeState::Discarded {
        let not_followable = result.is_some_and(|r| r.outcome == "not_followable");
        Some(OutcomeError {
            origin: ErrorOrigin::Gemhook,
            code: Some(
                if not_followable {
                    DISCARD_NOT_FOLLOWABLE
                } else {
                    DISCARD_FAILED
                }
                .to_owned(),
            ),
            message: last_error.map(str::to_owned),
        })
    } else {
        None
    };

    Outcome {
        version: OUTCOME_VERSION,
        webhook_id: webhook_id.to_owned(),
        event_type: event_type.to_owned(),
        resource_kind: resource_kind.to_owned(),
        resource_id,
        state,
        user_metadata,
        result: OutcomeResult {
            outcome: result.map(|r| r.outcome.to_owned()),
            location: result.and_then(|r| r.location.clone()),
            size_bytes: result.and_then(|r| r.size_bytes),
            sha256: result.and_then(|r| r.sha256.clone()),
            lines: count("lines"),
            error_lines: count("error_lines"),
            interaction_status: text("status").map(Cow::into_owned),
            inline,
        },
        error,
        finished_at,
    }
}

impl Outcome {
    /// The JSON a sink sends, with the inline interaction JSON left out when it is larger than
    /// `inline_max_bytes` (the application then reads it from `result.location`).
    pub fn encode(&self, inline_max_bytes: usize) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&*self.limit_inline(inline_max_bytes))
    }

    /// This outcome, without its inline interaction JSON when that is larger than
    /// `inline_max_bytes`.
    pub fn limit_inline(&self, inline_max_bytes: usize) -> Cow<'_, Outcome> {
        match &self.result.inline {
            Some(inline) if !fits(inline, inline_max_bytes) => {
                // Rare (the builder already dropped anything over the largest sink limit), so
                // a clone costs less code than a borrowed view of every field.
                let mut smaller = self.clone();
                smaller.result.inline = None;
                Cow::Owned(smaller)
            }
            _ => Cow::Borrowed(self),
        }
    }
}

/// The id of one delivery of one outcome to one sink: the outgoing `webhook-id` and
/// `Nats-Msg-Id`. Derived, not random, so every retry of the delivery carries the same id and
/// the application (or JetStream) can drop the duplicates; distinct per sink, so two sinks
/// feeding one application are not mistaken for each other.
pub fn delivery_id(webhook_id: &str, sink_name: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(webhook_id.as_bytes());
    // A separator that neither part contains in practice keeps ("ab", "c") from ("a", "bc").
    hash.update([0u8]);
    hash.update(sink_name.as_bytes());
    let mut id = hex::encode(hash.finalize());
    id.truncate(DELIVERY_ID_HEX_LEN);
    format!("gh_{id}")
}

/// Whether `value`, as compact JSON, is at most `max_bytes` long.
fn fits(value: &Value, max_bytes: usize) -> bool {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).is_ok() && counter.0 <= max_bytes
}

/// Counts bytes instead of keeping them: sizing a large interaction allocates nothing.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A scalar JSON value as text (`"a"` → `a`, `3` → `3`, `true` → `true`); `None` for null,
/// arrays and objects. Gemini sends `error_code` as a number or a string.
pub(crate) fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(flag) => Some(Cow::Borrowed(if *flag { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// The resource kind from the type's first segment, as the pointer planner names it.
fn kind_of(event_type: &str) -> &'static str {
    match event_type.split('.').next() {
        Some("batch") => "batch",
        Some("interaction") => "interaction",
        Some("video") => "video",
        _ => "other",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gemini::{ResourceKind, Unfollowable, Work};
    use chrono::TimeZone;
    use serde_json::json;

    pub(crate) fn finished_at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 6, 12, 0, 0).unwrap()
    }

    fn batch_result() -> JobResult {
        JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/123".into()),
            outcome: "stored",
            location: Some("file:///var/lib/gemhook/results/batch/batches_123.jsonl".into()),
            size_bytes: Some(2048),
            sha256: Some("ab".repeat(32)),
            summary: json!({
                "user_metadata": {"job_group": "nightly-eval", "run": 7},
                "lines": 10,
                "error_lines": 1,
            }),
        }
    }

    /// A completed `batch.succeeded` outcome, for the other modules' tests.
    pub(crate) fn sample() -> Outcome {
        build(Finished {
            webhook_id: "msg_2abc",
            event_type: Some("batch.succeeded"),
            state: OutcomeState::Completed,
            result: Some(&batch_result()),
            plan: None,
            last_error: None,
            inline: None,
            inline_max_bytes: 65536,
            finished_at: finished_at(),
        })
    }

    fn interaction_result() -> JobResult {
        JobResult {
            resource_kind: "interaction",
            resource_id: Some("v1_ChdInteraction".into()),
            outcome: "stored",
            location: Some("file:///results/interaction/v1_ChdInteraction.json".into()),
            size_bytes: Some(60),
            sha256: Some("cd".repeat(32)),
            summary: json!({"status": "requires_action"}),
        }
    }

    fn interaction(inline: Value, inline_max_bytes: usize) -> Outcome {
        build(Finished {
            webhook_id: "msg_int",
            event_type: Some("interaction.requires_action"),
            state: OutcomeState::Completed,
            result: Some(&interaction_result()),
            plan: None,
            last_error: None,
            inline: Some(inline),
            inline_max_bytes,
            finished_at: finished_at(),
        })
    }

    #[test]
    fn a_completed_batch_outcome_has_the_documented_json_shape() {
        let outcome = sample();

        let json = serde_json::to_value(&outcome).unwrap();

        assert_eq!(
            json,
            json!({
                "version": 1,
                "webhook_id": "msg_2abc",
                "type": "batch.succeeded",
                "resource_kind": "batch",
                "resource_id": "batches/123",
                "state": "completed",
                "user_metadata": {"job_group": "nightly-eval", "run": 7},
                "result": {
                    "outcome": "stored",
                    "location": "file:///var/lib/gemhook/results/batch/batches_123.jsonl",
                    "size_bytes": 2048,
                    "sha256": "ab".repeat(32),
                    "lines": 10,
                    "error_lines": 1,
                    "interaction_status": null,
                    "inline": null,
                },
                "error": null,
                "finished_at": "2026-05-06T12:00:00Z",
            })
        );
    }

    #[test]
    fn an_outcome_survives_a_round_trip_through_json() {
        let outcome = sample();

        let bytes = outcome.encode(65536).unwrap();

        assert_eq!(serde_json::from_slice::<Outcome>(&bytes).unwrap(), outcome);
    }

    #[test]
    fn a_failed_batch_carries_geminis_error_code_and_message() {
        let result = JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/9".into()),
            outcome: "recorded",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"error_code": 13, "error_message": "internal"}),
        };

        let outcome = build(Finished {
            webhook_id: "msg_f",
            event_type: Some("batch.failed"),
            state: OutcomeState::Completed,
            result: Some(&result),
            plan: None,
            last_error: None,
            inline: None,
            inline_max_bytes: 0,
            finished_at: finished_at(),
        });

        assert_eq!(
            outcome.error,
            Some(OutcomeError {
                origin: ErrorOrigin::Gemini,
                code: Some("13".into()),
                message: Some("internal".into()),
            })
        );
        assert_eq!(outcome.result.outcome.as_deref(), Some("recorded"));
    }

    #[test]
    fn a_discarded_job_without_a_result_takes_its_resource_and_metadata_from_the_plan() {
        let plan = Plan {
            event_type: Some("video.generated".into()),
            kind: ResourceKind::Video,
            resource_id: Some("videos/42".into()),
            user_metadata: Some(json!({"job_group": "promo"})),
            work: Work::Nothing,
        };

        let outcome = build(Finished {
            webhook_id: "msg_d",
            event_type: Some("video.generated"),
            state: OutcomeState::Discarded,
            result: None,
            plan: Some(&plan),
            last_error: Some("generativelanguage.googleapis.com answered 403 Forbidden"),
            inline: Some(json!({"ignored": true})),
            inline_max_bytes: 65536,
            finished_at: finished_at(),
        });

        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(
            json,
            json!({
                "version": 1,
                "webhook_id": "msg_d",
                "type": "video.generated",
                "resource_kind": "video",
                "resource_id": "videos/42",
                "state": "discarded",
                "user_metadata": {"job_group": "promo"},
                "result": {
                    "outcome": null, "location": null, "size_bytes": null, "sha256": null,
                    "lines": null, "error_lines": null, "interaction_status": null,
                    "inline": null,
                },
                "error": {
                    "origin": "gemhook",
                    "code": "failed",
                    "message": "generativelanguage.googleapis.com answered 403 Forbidden",
                },
                "finished_at": "2026-05-06T12:00:00Z",
            })
        );
    }

    #[test]
    fn a_discarded_unfollowable_pointer_says_so_in_its_error_code() {
        let result = JobResult {
            resource_kind: "batch",
            resource_id: Some("batches/1".into()),
            outcome: "not_followable",
            location: None,
            size_bytes: None,
            sha256: None,
            summary: json!({"reason": Unfollowable::GcsNotConfigured.to_string()}),
        };

        let outcome = build(Finished {
            webhook_id: "msg_nf",
            event_type: Some("batch.succeeded"),
            state: OutcomeState::Discarded,
            result: Some(&result),
            plan: None,
            last_error: Some("not followed: a gs:// pointer needs ..."),
            inline: None,
            inline_max_bytes: 0,
            finished_at: finished_at(),
        });

        let error = outcome.error.unwrap();
        assert_eq!(error.origin, ErrorOrigin::Gemhook);
        assert_eq!(error.code.as_deref(), Some(DISCARD_NOT_FOLLOWABLE));
    }

    #[test]
    fn an_event_without_a_type_or_plan_is_of_unknown_type_and_other_kind() {
        let outcome = build(Finished {
            webhook_id: "msg_x",
            event_type: None,
            state: OutcomeState::Completed,
            result: None,
            plan: None,
            last_error: None,
            inline: None,
            inline_max_bytes: 0,
            finished_at: finished_at(),
        });

        assert_eq!(outcome.event_type, UNKNOWN_TYPE);
        assert_eq!(outcome.resource_kind, "other");
        assert_eq!(outcome.error, None);
    }

    #[test]
    fn an_interaction_under_the_limit_is_sent_inline_with_its_status() {
        let body = json!({"id": "v1_ChdInteraction", "status": "requires_action"});
        let size = serde_json::to_vec(&body).unwrap().len();

        let outcome = interaction(body.clone(), size);

        assert_eq!(outcome.result.inline, Some(body));
        assert_eq!(
            outcome.result.interaction_status.as_deref(),
            Some("requires_action")
        );
    }

    #[test]
    fn an_interaction_over_the_limit_is_left_out_and_read_from_its_location() {
        let body = json!({"id": "v1_ChdInteraction", "status": "requires_action"});
        let size = serde_json::to_vec(&body).unwrap().len();

        let outcome = interaction(body, size - 1);

        assert_eq!(outcome.result.inline, None);
        assert!(outcome.result.location.is_some());
    }

    #[test]
    fn each_sink_cuts_the_inline_json_to_its_own_limit() {
        let body = json!({"id": "v1_ChdInteraction", "steps": ["x".repeat(100)]});
        let outcome = interaction(body.clone(), 65536);

        let small: Value = serde_json::from_slice(&outcome.encode(50).unwrap()).unwrap();
        let large: Value = serde_json::from_slice(&outcome.encode(65536).unwrap()).unwrap();

        assert_eq!(small["result"]["inline"], Value::Null);
        assert_eq!(large["result"]["inline"], body);
    }

    /// Golden values, computed independently (Python's hashlib: the first 32 hex digits of
    /// sha256(webhook_id, NUL, sink)). Applications deduplicate on these ids across gemhook
    /// versions: a change to the algorithm must fail here, not in production.
    #[test]
    fn a_delivery_id_is_pinned_to_its_algorithm() {
        assert_eq!(
            delivery_id("msg_1", "nightly"),
            "gh_13ae30a3a0a6c7f54fb32f6705fc5953"
        );
        assert_eq!(
            delivery_id("msg_2CBl8Y5QzXhDvJ1FpmXW", "app"),
            "gh_5ef27e5588451f2453ca979343b741c7"
        );
        // A replay's second revision: the key is "<webhook-id>#<revision>".
        assert_eq!(
            crate::deliver::Dispatcher::outgoing_id("msg_2CBl8Y5QzXhDvJ1FpmXW", 2, "app"),
            "gh_887e2f8ebde29e8dfc3013abb0523b5d"
        );
        assert_eq!(
            crate::deliver::Dispatcher::outgoing_id("msg_2CBl8Y5QzXhDvJ1FpmXW", 1, "app"),
            delivery_id("msg_2CBl8Y5QzXhDvJ1FpmXW", "app")
        );
    }

    #[test]
    fn delivery_ids_differ_per_sink_and_per_outcome() {
        let id = delivery_id("msg_1", "nightly");

        assert_ne!(id, delivery_id("msg_1", "audit"));
        assert_ne!(id, delivery_id("msg_2", "nightly"));
        // The separator keeps the boundary between the two parts.
        assert_ne!(delivery_id("msg_1a", "b"), delivery_id("msg_1", "ab"));
    }

    #[test]
    fn a_delivery_id_is_gh_and_32_hex_digits() {
        let id = delivery_id("msg_1", "nightly");

        let hex = id.strip_prefix("gh_").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
