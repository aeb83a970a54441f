//! Making text from a delivery storable in any column, on either backend. Pure.
//!
//! The raw body is kept byte for byte as `bytea`/BLOB; what is copied out of it into text and
//! JSON columns (the type, the resource id, the outcome, error messages) must be something every
//! column can hold, or a verified delivery would be refused by the database on every retry.
//! Postgres refuses NUL in `text` and `\u0000` in `jsonb`; a btree index entry must stay under
//! about 2.7 kB. So NUL is escaped as the six characters `\u0000` and long text is cut on a
//! character boundary, and the row says which of its fields were changed.

use std::borrow::Cow;

use serde_json::Value;

/// Longest text kept in an indexed or listed column (type, resource id), in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;

/// How a field was changed to be storable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alteration {
    /// NUL characters were replaced by the text `\u0000`.
    NulEscaped,
    /// The text was cut to [`MAX_FIELD_BYTES`].
    Truncated,
}

impl Alteration {
    pub fn as_str(self) -> &'static str {
        match self {
            Alteration::NulEscaped => "nul escaped",
            Alteration::Truncated => "truncated",
        }
    }
}

/// `text` with NUL escaped and cut to `max_bytes`, with what was done (at most both).
pub fn text(text: &str, max_bytes: usize) -> (Cow<'_, str>, Vec<Alteration>) {
    let mut done = Vec::new();
    let mut value = Cow::Borrowed(text);
    if value.contains('\0') {
        value = Cow::Owned(value.replace('\0', "\\u0000"));
        done.push(Alteration::NulEscaped);
    }
    if value.len() > max_bytes {
        let mut end = max_bytes;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value = Cow::Owned(value[..end].to_owned());
        done.push(Alteration::Truncated);
    }
    (value, done)
}

/// Text without NUL (no length limit): for error messages and other unindexed text.
pub fn unindexed_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether any string or key of `value` holds NUL (what [`json`] would change).
pub fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| key.contains('\0') || json_has_nul(value)),
        _ => false,
    }
}

/// A JSON value with NUL escaped in every string and key, so `jsonb` accepts it. Returns
/// whether anything changed.
pub fn json(value: &mut Value) -> bool {
    match value {
        Value::String(text) if text.contains('\0') => {
            *text = text.replace('\0', "\\u0000");
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, v| json(v) | changed),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|key| key.contains('\0')) {
                let entries = std::mem::take(map);
                for (key, value) in entries {
                    map.insert(unindexed_text(&key).into_owned(), value);
                }
                changed = true;
            }
            map.values_mut()
                .fold(changed, |changed, v| json(v) | changed)
        }
        _ => false,
    }
}

/// The fields of an event, made storable, with a note of what was changed (`None` when
/// nothing was): e.g. `event_type nul escaped; resource_id truncated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFields {
    pub event_type: Option<String>,
    pub resource_id: Option<String>,
    pub altered: Option<String>,
}

impl EventFields {
    pub fn from(event_type: Option<&str>, resource_id: Option<&str>) -> EventFields {
        let mut notes = Vec::new();
        let mut field = |name: &str, value: Option<&str>| {
            value.map(|value| {
                let (value, done) = text(value, MAX_FIELD_BYTES);
                for alteration in done {
                    notes.push(format!("{name} {}", alteration.as_str()));
                }
                value.into_owned()
            })
        };
        let event_type = field("event_type", event_type);
        let resource_id = field("resource_id", resource_id);
        EventFields {
            event_type,
            resource_id,
            altered: (!notes.is_empty()).then(|| notes.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        let (value, done) = text("batch.succeeded", MAX_FIELD_BYTES);
        assert!(matches!(value, Cow::Borrowed("batch.succeeded")));
        assert!(done.is_empty());
    }

    #[test]
    fn nul_is_escaped_and_long_text_cut_on_a_character_boundary() {
        let (value, done) = text("a\0b", 10);
        assert_eq!(value, "a\\u0000b");
        assert_eq!(done, [Alteration::NulEscaped]);

        // "é" is two bytes: a cut at 3 would split the second one.
        let (value, done) = text("aéé", 4);
        assert_eq!(value, "aé");
        assert_eq!(done, [Alteration::Truncated]);
    }

    #[test]
    fn json_strings_and_keys_lose_their_nul() {
        let mut value = serde_json::json!({"k\u{0}": ["x\u{0}y", {"n": 1}], "ok": "fine"});
        assert!(json_has_nul(&value));
        assert!(json(&mut value));
        assert!(!json_has_nul(&value));
        assert_eq!(
            value,
            serde_json::json!({"k\\u0000": ["x\\u0000y", {"n": 1}], "ok": "fine"})
        );
        let mut clean = serde_json::json!({"a": ["b", 1, null]});
        assert!(!json(&mut clean));
    }

    #[test]
    fn the_event_note_names_each_changed_field() {
        let long = "r".repeat(MAX_FIELD_BYTES + 5);
        let fields = EventFields::from(Some("batch.\0"), Some(&long));
        assert_eq!(fields.event_type.as_deref(), Some("batch.\\u0000"));
        assert_eq!(fields.resource_id.map(|r| r.len()), Some(MAX_FIELD_BYTES));
        assert_eq!(
            fields.altered.as_deref(),
            Some("event_type nul escaped; resource_id truncated")
        );
        assert_eq!(EventFields::from(Some("t"), None).altered, None);
    }
}
