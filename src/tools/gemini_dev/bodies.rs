//! Pure: the bodies the stand-in answers with, in the shapes of Gemini's REST API (see "Following
//! the pointers" in the shared notes, and the Batch, Video and Interactions docs), and
//! Google's error shape `{"error": {"code", "message", "status"}}`.
//!
//! Every body is derived from the resource id alone (a SHA-256 of it picks texts, numbers and
//! times), so a test can rebuild exactly what the worker must have stored; nothing reads the
//! clock or a random source.

use std::convert::Infallible;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::Stream;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::resources::{BatchState, InteractionStatus};

/// The model the stand-in's batches and interactions answer with.
pub const MODEL: &str = "gemini-2.5-flash";

/// Lines in a batch's results file (when not sized for a benchmark), and how many of them are
/// errors: one failed request among four, so `error_lines` has something to count.
pub const BATCH_RESULT_LINES: u64 = 4;
pub const BATCH_RESULT_ERROR_LINES: u64 = 1;

/// Every line of a sized results file ([`sized_batch_results`]) is exactly this long, newline
/// included, so the file's length is known before it is generated.
pub const SIZED_LINE_BYTES: usize = 1024;

/// Lines per chunk of a sized results file: 1 MiB, the size bench/run's old stand-in wrote.
const SIZED_CHUNK_LINES: u64 = 1024;

/// Bytes of generated media data in a stand-in video.
const VIDEO_MEDIA_BYTES: usize = 16 * 1024;

/// Requests and answers the stand-in's batches and interactions "ran". ASCII without quotes
/// or backslashes, so they can pad a JSON string byte for byte.
const EXCHANGES: [(&str, &str); 8] = [
    (
        "Summarise the plot of Hamlet in one sentence.",
        "A Danish prince feigns madness to avenge his father's murder, and the revenge destroys nearly everyone, himself included.",
    ),
    (
        "Translate 'good morning' into French.",
        "Bonjour. In the afternoon you would switch to 'bon apres-midi'.",
    ),
    (
        "What is the boiling point of water at sea level, in Celsius?",
        "100 degrees Celsius at standard atmospheric pressure (101.325 kPa).",
    ),
    (
        "Write a haiku about a webhook that arrives twice.",
        "Same id, once again / the table already knows / nothing is lost twice.",
    ),
    ("Give three names for a grey cat.", "Ash, Pewter and Smoke."),
    (
        "Explain idempotency to a new engineer in two sentences.",
        "An idempotent operation has the same effect whether it runs once or many times. That makes retries safe: a repeated request cannot double-charge or double-write.",
    ),
    (
        "Classify the sentiment of: 'The delivery was late but the support team was great.'",
        "Mixed: negative about the delivery, positive about the support.",
    ),
    (
        "List the planets of the solar system in order from the Sun.",
        "Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune.",
    ),
];

/// Deterministic numbers from a resource id.
struct Seed([u8; 32]);

impl Seed {
    fn of(kind: &str, id: &str) -> Seed {
        Seed(
            Sha256::new()
                .chain_update(kind)
                .chain_update(b"/")
                .chain_update(id)
                .finalize()
                .into(),
        )
    }

    fn byte(&self, index: usize) -> usize {
        usize::from(self.0[index % self.0.len()])
    }

    fn exchange(&self, index: usize) -> (&'static str, &'static str) {
        EXCHANGES[self.byte(index) % EXCHANGES.len()]
    }

    /// A time within the week before 2026-01-22T12:00:00Z (the published example's).
    fn time(&self) -> DateTime<Utc> {
        let back = u32::from_be_bytes([self.0[28], self.0[29], self.0[30], self.0[31]]) % 604_800;
        DateTime::<Utc>::from_timestamp(1_769_083_200 - i64::from(back), 0)
            .expect("a time in 2026 is representable")
    }

    fn token(&self, from: usize, len: usize) -> String {
        let bytes: Vec<u8> = (from..from + len).map(|i| self.0[i % 32]).collect();
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Google's canonical status name for an HTTP status.
pub fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// The message Google's APIs usually give with a status.
pub fn default_message(code: u16) -> &'static str {
    match code {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "The caller does not have permission",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
        503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        _ => "The request failed.",
    }
}

/// `{"error": {"code", "message", "status"}}`.
pub fn google_error(code: u16, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status_name(code)}})
}

/// What Google answers (400) to a key it does not know.
pub fn api_key_invalid() -> Value {
    let message = "API key not valid. Please pass a valid API key.";
    let mut body = google_error(400, message);
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"}
    }]);
    body
}

/// What Google answers (403) to a request without any key.
pub fn api_key_missing() -> Value {
    google_error(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
    )
}

/// One line of a batch results file: `{"key": ..., "response": ...}` or `{"key": ..., "error":
/// ...}`, in that order (a struct, because serde_json's map would sort `error` first).
#[derive(Serialize)]
struct ResultLine<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

fn tokens(text: &str) -> usize {
    // About four tokens for every three words, Gemini's rule of thumb for English.
    text.split_whitespace().count() * 4 / 3 + 1
}

fn generate_content_response(seed: &Seed, index: usize, prompt: &str, answer: &str) -> Value {
    let (prompt_tokens, answer_tokens) = (tokens(prompt), tokens(answer));
    json!({
        "candidates": [{
            "content": {"parts": [{"text": answer}], "role": "model"},
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens
        },
        "modelVersion": MODEL,
        "responseId": seed.token(index * 5, 16)
    })
}

/// The results file of `batches/<batch>`: [`BATCH_RESULT_LINES`] lines in input order, the
/// last one a failed request.
pub fn batch_results(batch: &str) -> Vec<u8> {
    let seed = Seed::of("batch", batch);
    let mut out = Vec::new();
    for index in 0..BATCH_RESULT_LINES as usize {
        let key = format!("request-{}", index + 1);
        let line = if index + 1 < BATCH_RESULT_LINES as usize {
            let (prompt, answer) = seed.exchange(index);
            ResultLine {
                key: &key,
                response: Some(generate_content_response(&seed, index, prompt, answer)),
                error: None,
            }
        } else {
            ResultLine {
                key: &key,
                response: None,
                error: Some(json!({
                    "code": 3,
                    "message": "* GenerateContentRequest.contents: contents is not specified\n",
                    "status": "INVALID_ARGUMENT"
                })),
            }
        };
        serde_json::to_writer(&mut out, &line).expect("a result line serialises");
        out.push(b'\n');
    }
    out
}

/// A results file of `lines` successful lines of exactly [`SIZED_LINE_BYTES`] each, generated
/// as it is read (1 MiB at a time), for benchmarks and memory tests: never held whole.
pub fn sized_batch_results(
    batch: &str,
    lines: u64,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let seed = Seed::of("batch", batch);
    // Padding text from the batch's own answers, long enough for any line.
    let mut filler = String::new();
    let mut index = 0;
    while filler.len() < SIZED_LINE_BYTES {
        filler.push_str(seed.exchange(index).1);
        filler.push(' ');
        index += 1;
    }
    let tail = format!(
        r#""}}],"role":"model"}},"finishReason":"STOP","index":0}}],"modelVersion":"{MODEL}"}}}}"#
    );
    futures::stream::unfold(0u64, move |done| {
        let chunk = (done < lines).then(|| {
            let count = SIZED_CHUNK_LINES.min(lines - done);
            let mut chunk = BytesMut::with_capacity(count as usize * SIZED_LINE_BYTES);
            for number in done + 1..=done + count {
                sized_line(&mut chunk, number, &filler, &tail);
            }
            (Ok(chunk.freeze()), done + count)
        });
        std::future::ready(chunk)
    })
}

/// The length of [`sized_batch_results`]' output.
pub fn sized_batch_results_len(lines: u64) -> u64 {
    lines * SIZED_LINE_BYTES as u64
}

/// One line of exactly [`SIZED_LINE_BYTES`]: the response text is cut from `filler` to fit.
fn sized_line(out: &mut BytesMut, number: u64, filler: &str, tail: &str) {
    let head = format!(
        r#"{{"key":"request-{number}","response":{{"candidates":[{{"content":{{"parts":[{{"text":""#
    );
    // `tail` closes the JSON; the newline ends the line.
    let pad = SIZED_LINE_BYTES - head.len() - tail.len() - 1;
    out.put_slice(head.as_bytes());
    out.put_slice(&filler.as_bytes()[..pad]);
    out.put_slice(tail.as_bytes());
    out.put_u8(b'\n');
}

/// `GET /v1beta/batches/<batch>`: the long-running operation of a batch. The results' location
/// is in both places the shared notes name (`response.responsesFile` and
/// `metadata.output.responsesFile`).
pub fn batch_resource(batch: &str, state: BatchState, request_count: u64) -> Value {
    let seed = Seed::of("batch", batch);
    let name = format!("batches/{batch}");
    let created = seed.time();
    let ended = created + chrono::Duration::minutes(7 + seed.byte(3) as i64);
    let mut metadata = json!({
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "name": name,
        "model": format!("models/{MODEL}"),
        "displayName": format!("gemhook-dev-{}", &batch[..batch.len().min(12)]),
        "createTime": rfc3339(created),
        "updateTime": rfc3339(ended),
        "endTime": rfc3339(ended),
        "state": state.job_state(),
        "batchStats": {"requestCount": request_count.to_string()}
    });
    let mut resource = json!({"name": name, "metadata": {}, "done": true});
    match state {
        BatchState::Succeeded => {
            let file = format!("files/batch-{batch}");
            // A sized (benchmark) file has no error lines; the usual one has one.
            let failed = if request_count == BATCH_RESULT_LINES {
                BATCH_RESULT_ERROR_LINES
            } else {
                0
            };
            metadata["batchStats"]["successfulRequestCount"] =
                json!((request_count - failed).to_string());
            metadata["batchStats"]["failedRequestCount"] = json!(failed.to_string());
            metadata["output"] = json!({"responsesFile": file});
            resource["response"] = json!({
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                "responsesFile": file
            });
        }
        BatchState::Failed => {
            resource["error"] = json!({
                "code": 3,
                "message": "Request 4 of the input file is not valid: missing field `contents`."
            });
        }
        BatchState::Expired | BatchState::Cancelled => {}
    }
    resource["metadata"] = metadata;
    resource
}

/// `GET /v1beta/interactions/<id>`: the interaction, its `steps` ending as its status says.
pub fn interaction(id: &str, status: InteractionStatus) -> Value {
    let seed = Seed::of("interaction", id);
    let (prompt, answer) = seed.exchange(0);
    let created = seed.time();
    let updated = created + chrono::Duration::seconds(20 + seed.byte(5) as i64);
    let mut steps =
        vec![json!({"type": "user_input", "content": [{"type": "text", "text": prompt}]})];
    let mut body = json!({
        "id": id,
        "object": "interaction",
        "model": MODEL,
        "status": status.as_str(),
        "created": rfc3339(created),
        "updated": rfc3339(updated),
    });
    let mut output_tokens = 0;
    match status {
        InteractionStatus::Completed => {
            steps.push(
                json!({"type": "model_output", "content": [{"type": "text", "text": answer}]}),
            );
            output_tokens = tokens(answer);
        }
        InteractionStatus::RequiresAction => {
            // The model asks the application to run a function and send back its result.
            steps.push(json!({
                "type": "function_call",
                "id": format!("call_{}", seed.token(8, 12)),
                "name": "lookup_order",
                "arguments": {"order_id": format!("ord-{:04}", seed.byte(9) * 37 % 10_000)}
            }));
            output_tokens = 12;
        }
        InteractionStatus::Failed => {
            body["errors"] = json!([{
                "code": 13,
                "message": default_message(500)
            }]);
        }
        InteractionStatus::Cancelled => {}
    }
    let input_tokens = tokens(prompt);
    body["steps"] = Value::Array(steps);
    body["usage"] = json!({
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens
    });
    body
}

/// `GET /v1beta/models/<model>/operations/<operation>`: a finished Veo operation whose sample
/// points at its video file on `base_url`.
pub fn operation(model: &str, operation: &str, base_url: &str) -> Value {
    json!({
        "name": format!("models/{model}/operations/{operation}"),
        "done": true,
        "response": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {
                "generatedSamples": [{
                    "video": {"uri": format!("{base_url}/v1beta/files/video-{operation}:download?alt=media")}
                }]
            }
        }
    })
}

/// `GET /v1beta/files/<file_id>`: the file's metadata. `sha256` is left out for generated
/// files too large to hash first.
pub fn file_metadata(
    file_id: &str,
    mime_type: &str,
    size_bytes: u64,
    sha256: Option<&[u8]>,
    base_url: &str,
) -> Value {
    let created = Seed::of("file", file_id).time();
    let mut body = json!({
        "name": format!("files/{file_id}"),
        "mimeType": mime_type,
        "sizeBytes": size_bytes.to_string(),
        "createTime": rfc3339(created),
        "updateTime": rfc3339(created),
        // Generated files are deleted after two days.
        "expirationTime": rfc3339(created + chrono::Duration::hours(48)),
        "uri": format!("{base_url}/v1beta/files/{file_id}"),
        "downloadUri": format!("{base_url}/download/v1beta/files/{file_id}:download?alt=media"),
        "state": "ACTIVE",
        "source": "GENERATED"
    });
    if let Some(digest) = sha256 {
        body["sha256Hash"] = json!(STANDARD.encode(digest));
    }
    body
}

/// A small MP4 for the video of `<operation>`: an ISO base media file (`ftyp`, `moov` with an
/// 8-second `mvhd`, and `mdat`) whose media bytes derive from the id. Players will not show a
/// picture (there is no track), but tools that sniff files see an MP4.
pub fn video(operation: &str) -> Vec<u8> {
    fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let size = u32::try_from(8 + payload.len()).expect("a small box");
        let mut out = size.to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }
    let mut ftyp = b"isom".to_vec();
    ftyp.extend_from_slice(&512u32.to_be_bytes());
    ftyp.extend_from_slice(b"isomiso2avc1mp41");
    let mut mvhd = vec![0u8; 4]; // version 0, no flags
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // creation time
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // modification time
    mvhd.extend_from_slice(&1000u32.to_be_bytes()); // timescale: milliseconds
    mvhd.extend_from_slice(&8000u32.to_be_bytes()); // duration: 8 s, Veo's default length
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
    mvhd.extend_from_slice(&[0u8; 10]); // reserved
    for value in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&value.to_be_bytes()); // the identity matrix
    }
    mvhd.extend_from_slice(&[0u8; 24]); // pre-defined
    mvhd.extend_from_slice(&1u32.to_be_bytes()); // next track id
    let mut media = Vec::with_capacity(VIDEO_MEDIA_BYTES);
    let mut block: [u8; 32] = Seed::of("video", operation).0;
    while media.len() < VIDEO_MEDIA_BYTES {
        media.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    let mut out = mp4_box(b"ftyp", &ftyp);
    out.extend(mp4_box(b"moov", &mp4_box(b"mvhd", &mvhd)));
    out.extend(mp4_box(b"mdat", &media));
    out
}

/// The signature of the stand-in's media URL for a file: what a signed storage URL carries
/// instead of the API key.
pub fn media_signature(file_id: &str) -> String {
    hex::encode(&Sha256::digest(format!("gemhook-dev-media/{file_id}"))[..8])
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::results::JsonlCounter;

    #[test]
    fn batch_results_are_deterministic_jsonl_with_one_error_line() {
        let body = batch_results("abc");
        assert_eq!(body, batch_results("abc"));
        assert_ne!(body, batch_results("abd"));
        let mut counter = JsonlCounter::default();
        counter.feed(&body);
        assert_eq!(
            counter.finish(),
            (BATCH_RESULT_LINES, BATCH_RESULT_ERROR_LINES)
        );
        let first: Value =
            serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["key"], "request-1");
        let text = &first["response"]["candidates"][0]["content"]["parts"][0]["text"];
        assert!(text.as_str().is_some_and(|t| !t.is_empty()));
        assert!(body.starts_with(br#"{"key":"request-1","response":"#));
    }

    #[tokio::test]
    async fn sized_results_have_exact_lines_of_one_kib_that_parse() {
        let chunks: Vec<Bytes> = sized_batch_results("big", 2500)
            .map(|chunk| chunk.unwrap())
            .collect()
            .await;
        assert_eq!(chunks.len(), 3);
        let all: Vec<u8> = chunks.concat();
        assert_eq!(all.len() as u64, sized_batch_results_len(2500));
        for (index, line) in all.split_inclusive(|b| *b == b'\n').enumerate() {
            assert_eq!(line.len(), SIZED_LINE_BYTES, "line {index}");
            let value: Value = serde_json::from_slice(line).unwrap();
            assert_eq!(value["key"], format!("request-{}", index + 1));
        }
    }

    #[test]
    fn a_batch_resource_reports_its_state_and_results_file() {
        let done = batch_resource("abc", BatchState::Succeeded, BATCH_RESULT_LINES);
        assert_eq!(done["name"], "batches/abc");
        assert_eq!(done["metadata"]["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(done["response"]["responsesFile"], "files/batch-abc");
        assert_eq!(
            done["metadata"]["output"]["responsesFile"],
            "files/batch-abc"
        );
        assert_eq!(done["metadata"]["batchStats"]["failedRequestCount"], "1");
        let failed = batch_resource("abc-failed", BatchState::Failed, BATCH_RESULT_LINES);
        assert_eq!(failed["metadata"]["state"], "JOB_STATE_FAILED");
        assert!(failed.get("response").is_none());
        assert_eq!(failed["error"]["code"], 3);
    }

    #[test]
    fn interactions_end_as_their_status_says() {
        let done = interaction("v1_ChdA", InteractionStatus::Completed);
        assert_eq!(done["status"], "completed");
        assert_eq!(done["steps"][1]["type"], "model_output");
        assert_eq!(done, interaction("v1_ChdA", InteractionStatus::Completed));
        let waiting = interaction("v1_ChdA-requires_action", InteractionStatus::RequiresAction);
        assert_eq!(waiting["steps"][1]["type"], "function_call");
        let failed = interaction("v1_ChdA-failed", InteractionStatus::Failed);
        assert_eq!(failed["errors"][0]["code"], 13);
    }

    #[test]
    fn a_video_is_an_iso_media_file_derived_from_its_operation() {
        let one = video("op1");
        assert_eq!(&one[4..12], b"ftypisom");
        assert_eq!(one, video("op1"));
        assert_ne!(one, video("op2"));
        assert!(one.windows(4).any(|w| w == b"mvhd"));
        assert!(one.len() > VIDEO_MEDIA_BYTES);
    }

    #[test]
    fn errors_have_googles_shape() {
        let body = google_error(404, default_message(404));
        assert_eq!(
            body,
            json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}})
        );
        assert_eq!(
            api_key_invalid()["error"]["details"][0]["reason"],
            "API_KEY_INVALID"
        );
        assert_eq!(api_key_missing()["error"]["status"], "PERMISSION_DENIED");
    }
}
