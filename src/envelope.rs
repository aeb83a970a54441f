//! Gemini's event envelope, read defensively: `{"type", "version", "timestamp", "data": {...}}`.
//!
//! Pure. The receiver only needs the type and the resource id to file the event; everything else
//! stays in the raw body, which is stored byte for byte. Nothing here ever rejects a delivery:
//! a verified body that is not what we expect is stored as `unparseable` or `ignored`, because an
//! error answer would make Gemini retry it for 24 hours and may get the endpoint disabled.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// How the receiver filed a verified event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// A known event type: the worker follows its pointer.
    Accepted,
    /// A JSON object with a `type` we do not know: kept, nothing to follow.
    Ignored,
    /// Not a JSON object, or no string `type`: kept byte for byte for a human to look at.
    Unparseable,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Accepted => "accepted",
            EventStatus::Ignored => "ignored",
            EventStatus::Unparseable => "unparseable",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event types of Gemini's catalogue (`../shared/gemini-webhooks.md`).
pub const KNOWN_TYPES: &[&str] = &[
    "batch.succeeded",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
    "interaction.completed",
    "interaction.requires_action",
    "interaction.failed",
    "interaction.cancelled",
    "video.generated",
];

/// What the receiver files an event under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_type: Option<String>,
    /// `data.id`, else `data.name` (producers differ); numbers are kept as their decimal text.
    pub resource_id: Option<String>,
    pub status: EventStatus,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<RawData<'a>>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(default, borrow)]
    id: Option<IdValue<'a>>,
    #[serde(default, borrow)]
    name: Option<IdValue<'a>>,
}

/// An identifier as a string or a number; anything else is treated as absent.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdValue<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Number(serde_json::Number),
    Other(IgnoredAny),
}

impl IdValue<'_> {
    fn into_string(self) -> Option<String> {
        match self {
            IdValue::Text(text) if !text.is_empty() => Some(text.into_owned()),
            IdValue::Number(number) => Some(number.to_string()),
            _ => None,
        }
    }
}

/// Files a verified body. Never fails.
pub fn parse(body: &[u8]) -> Envelope {
    let unparseable = Envelope {
        event_type: None,
        resource_id: None,
        status: EventStatus::Unparseable,
    };
    // serde_json would also fill a struct from a JSON array; only an object is an envelope.
    let starts_as_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !starts_as_object {
        return unparseable;
    }
    let Ok(raw) = serde_json::from_slice::<RawEnvelope<'_>>(body) else {
        return unparseable;
    };
    let Some(event_type) = raw.event_type.filter(|t| !t.is_empty()) else {
        return unparseable;
    };
    let resource_id = raw.data.and_then(|data| {
        data.id
            .and_then(IdValue::into_string)
            .or_else(|| data.name.and_then(IdValue::into_string))
    });
    let status = if KNOWN_TYPES.contains(&event_type.as_ref()) {
        EventStatus::Accepted
    } else {
        EventStatus::Ignored
    };
    Envelope {
        event_type: Some(event_type.into_owned()),
        resource_id,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_batch_example_is_accepted_with_its_id() {
        let body =
            br#"{"type": "batch.succeeded", "version": "v1", "timestamp": "2026-01-22T12:00:00Z",
 "data": {"id": "batch_123456", "output_file_uri": "gs://my-bucket/results.jsonl"}}"#;
        let envelope = parse(body);
        assert_eq!(envelope.status, EventStatus::Accepted);
        assert_eq!(envelope.event_type.as_deref(), Some("batch.succeeded"));
        assert_eq!(envelope.resource_id.as_deref(), Some("batch_123456"));
    }

    #[test]
    fn a_name_or_numeric_id_stands_in_for_a_missing_string_id() {
        let by_name = parse(br#"{"type":"batch.failed","data":{"name":"batches/123"}}"#);
        assert_eq!(by_name.resource_id.as_deref(), Some("batches/123"));
        let numeric = parse(br#"{"type":"batch.failed","data":{"id":123}}"#);
        assert_eq!(numeric.resource_id.as_deref(), Some("123"));
        let odd = parse(br#"{"type":"batch.failed","data":{"id":{"x":1}}}"#);
        assert_eq!(odd.status, EventStatus::Accepted);
        assert_eq!(odd.resource_id, None);
    }

    #[test]
    fn an_unknown_type_is_ignored_but_kept() {
        let envelope = parse(br#"{"type":"model.tuned","data":{"id":"t1"},"extra":[1,2]}"#);
        assert_eq!(envelope.status, EventStatus::Ignored);
        assert_eq!(envelope.event_type.as_deref(), Some("model.tuned"));
    }

    #[test]
    fn bodies_that_are_not_typed_objects_are_unparseable() {
        for body in [
            &b"not json"[..],
            b"[1,2]",
            b"\"batch.succeeded\"",
            b"{}",
            b"{\"type\":7}",
            b"{\"type\":\"\"}",
            b"",
            b"{\"type\":\"batch.succeeded\"",
        ] {
            assert_eq!(parse(body).status, EventStatus::Unparseable, "{body:?}");
        }
    }
}
