//! Pure: where a fetched batch keeps its results (`GET /v1beta/batches/{id}`), for a
//! `batch.succeeded` event that names no results file.
//!
//! The location appears in two places, and Google answers in lowerCamelCase where the SDKs
//! write snake_case, so all four spellings are read: the Batch docs' REST flow reads
//! `response.responsesFile` / `response.inlinedResponses`, the Python SDK
//! `metadata.output.responsesFile` / `metadata.output.inlinedResponses`. Inline results are an
//! object wrapping an `inlinedResponses` array (a bare array is accepted too).

use serde_json::Value;

/// What the batch says about its results.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchResults {
    /// A results file to follow (`files/<id>`, a URL or `gs://`).
    File(String),
    /// Inline responses, one JSON value per request, in request order.
    Inline(Vec<Value>),
    /// No results, and the batch has not succeeded (yet): the event may have outrun the
    /// resource, or it is not what the event said.
    NotReady { state: Option<String> },
    /// The batch succeeded but names no results.
    Missing { state: Option<String> },
}

/// Reads a batch operation. Never fails.
pub fn results_of(batch: &Value) -> BatchResults {
    let holders = [
        batch.get("response"),
        batch.get("metadata").and_then(|m| m.get("output")),
        // Some answers may put the output at the top level or under `metadata` directly.
        batch.get("output"),
        batch.get("dest"),
    ];
    for holder in holders.iter().flatten() {
        if let Some(file) = text(
            holder,
            &["responsesFile", "responses_file", "fileName", "file_name"],
        ) {
            return BatchResults::File(file);
        }
        if let Some(inline) = inline(holder) {
            return BatchResults::Inline(inline);
        }
    }
    let state = batch
        .get("metadata")
        .and_then(|m| text(m, &["state"]))
        .or_else(|| text(batch, &["state"]));
    let succeeded = state.as_deref().is_some_and(|s| s.ends_with("SUCCEEDED"))
        || (state.is_none() && batch.get("done").and_then(Value::as_bool) == Some(true));
    if succeeded {
        BatchResults::Missing { state }
    } else {
        BatchResults::NotReady { state }
    }
}

/// The inline responses as JSONL, one response per line (compact JSON has no newlines).
pub fn to_jsonl(responses: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for response in responses {
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, response);
        out.push(b'\n');
    }
    out
}

fn inline(holder: &Value) -> Option<Vec<Value>> {
    let wrapper = field(holder, &["inlinedResponses", "inlined_responses"])?;
    let list = match wrapper {
        Value::Array(list) => list,
        other => match field(other, &["inlinedResponses", "inlined_responses"])? {
            Value::Array(list) => list,
            _ => return None,
        },
    };
    Some(list.clone())
}

fn field<'a>(value: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .filter_map(|name| value.get(*name))
        .find(|v| !v.is_null())
}

fn text(value: &Value, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| value.get(*name).and_then(Value::as_str))
        .map(str::trim)
        .find(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_results_file_is_read_from_response_or_metadata_output_in_either_spelling() {
        for batch in [
            json!({"response": {"responsesFile": "files/a"}}),
            json!({"response": {"responses_file": "files/a"}}),
            json!({"metadata": {"state": "BATCH_STATE_SUCCEEDED", "output": {"responsesFile": "files/a"}}}),
            json!({"metadata": {"output": {"responses_file": "files/a"}}}),
        ] {
            assert_eq!(
                results_of(&batch),
                BatchResults::File("files/a".into()),
                "{batch}"
            );
        }
    }

    #[test]
    fn inline_responses_are_an_object_wrapping_an_array_in_either_place() {
        let lines = vec![
            json!({"response": {"text": "a"}}),
            json!({"error": {"code": 3}}),
        ];
        for batch in [
            json!({"response": {"inlinedResponses": {"inlinedResponses": lines}}}),
            json!({"metadata": {"output": {"inlinedResponses": {"inlinedResponses": lines}}}}),
            json!({"response": {"inlined_responses": {"inlined_responses": lines}}}),
            json!({"response": {"inlinedResponses": lines}}),
        ] {
            assert_eq!(
                results_of(&batch),
                BatchResults::Inline(lines.clone()),
                "{batch}"
            );
        }
        assert_eq!(
            to_jsonl(&lines),
            b"{\"response\":{\"text\":\"a\"}}\n{\"error\":{\"code\":3}}\n"
        );
    }

    #[test]
    fn a_batch_without_results_is_not_ready_unless_it_succeeded() {
        assert_eq!(
            results_of(&json!({"metadata": {"state": "BATCH_STATE_RUNNING"}, "done": false})),
            BatchResults::NotReady {
                state: Some("BATCH_STATE_RUNNING".into())
            }
        );
        assert_eq!(
            results_of(&json!({"metadata": {"state": "JOB_STATE_SUCCEEDED"}})),
            BatchResults::Missing {
                state: Some("JOB_STATE_SUCCEEDED".into())
            }
        );
        assert_eq!(
            results_of(&json!({"done": true})),
            BatchResults::Missing { state: None }
        );
        assert_eq!(
            results_of(&json!("garbage")),
            BatchResults::NotReady { state: None }
        );
    }
}
