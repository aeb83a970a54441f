//! `gemhook verify` on a valid, a tampered and a stale capture, in each capture shape.

use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use futures::executor::block_on;
use serde_json::{Value, json};

use super::*;
use crate::tools::explain::DiagnosisKind;
use crate::verify::{WebhookSecret, sign_v1};

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ID: &str = "msg_7f3a9c";
const TS: i64 = 1_700_000_000;
const BODY: &str = r#"{"type":"batch.succeeded","data":{"id":"batches/123"}}"#;

fn keys() -> Keys {
    Keys {
        secrets: vec![
            WebhookSecret::parse(OLD_SECRET).unwrap(),
            WebhookSecret::parse(NEW_SECRET).unwrap(),
        ],
        ..Keys::default()
    }
}

/// Signed with the second configured secret, as during a rotation.
fn signature(body: &[u8]) -> String {
    sign_v1(&WebhookSecret::parse(NEW_SECRET).unwrap(), ID, TS, body)
}

/// What `gemhook events show --json` prints for a delivery (see `inspect::event_json`).
fn event_json(signed: &[u8], stored: &[u8]) -> Value {
    json!({
        "webhook_id": ID,
        "type": "batch.succeeded",
        "resource_id": "batches/123",
        "status": "received",
        "scheme": "v1",
        "received_at": "2023-11-14T22:13:21.000000Z",
        "job_state": "completed",
        "webhook_timestamp": TS,
        "headers": {
            "webhook-id": ID,
            "webhook-timestamp": TS.to_string(),
            "webhook-signature": signature(signed),
            "content-type": "application/json",
            "user-agent": "Google-Webhooks",
        },
        "body": std::str::from_utf8(stored).ok(),
        "body_base64": STANDARD.encode(stored),
    })
}

fn raw_http(line_end: &str, body: &str, content_length: bool) -> String {
    let mut request = [
        "POST /webhooks/gemini HTTP/1.1".to_owned(),
        "Host: hooks.example.com".to_owned(),
        "Content-Type: application/json".to_owned(),
        format!("Webhook-ID: {ID}"),
        format!("Webhook-Timestamp:  {TS} "),
        format!("WEBHOOK-SIGNATURE: {}", signature(BODY.as_bytes())),
    ]
    .join(line_end);
    if content_length {
        request.push_str(&format!("{line_end}Content-Length: {}", body.len()));
    }
    format!("{request}{line_end}{line_end}{body}")
}

fn temp_file(contents: &[u8]) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "gemhook-capture-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

fn args(file: PathBuf, now: Option<i64>, at_receipt: bool, json: bool) -> VerifyArgs {
    VerifyArgs {
        file,
        now,
        at_receipt,
        json,
    }
}

/// Runs the command on a capture file and checks that no secret shows in what it prints.
fn verify_file(contents: &[u8], now: Option<i64>, at_receipt: bool, json: bool) -> (String, bool) {
    let path = temp_file(contents);
    let result = block_on(run_verify(
        &args(path.clone(), now, at_receipt, json),
        &keys(),
        &Policy::default(),
        None,
    ));
    std::fs::remove_file(&path).unwrap();
    let (output, accepted) = result.unwrap();
    for secret in [OLD_SECRET, NEW_SECRET] {
        assert!(
            !output.contains(secret.trim_start_matches("whsec_")),
            "{output}"
        );
    }
    (output, accepted)
}

#[test]
fn a_valid_events_show_capture_verifies_and_names_the_secret() {
    let capture = event_json(BODY.as_bytes(), BODY.as_bytes()).to_string();
    let (output, accepted) = verify_file(capture.as_bytes(), Some(TS + 5), false, false);
    assert!(accepted, "{output}");
    assert!(
        output.contains("(gemhook events show --json, 5 headers)"),
        "{output}"
    );
    assert!(output.contains("verdict: accepted (scheme v1)"), "{output}");
    assert!(output.contains("entry #1 matched secret #2"), "{output}");
}

#[test]
fn a_valid_raw_http_capture_verifies_with_crlf_or_lf() {
    // With Content-Length, bytes after the body (an editor's final newline) are not body.
    let crlf = format!("{}\n", raw_http("\r\n", BODY, true));
    let (output, accepted) = verify_file(crlf.as_bytes(), Some(TS), false, false);
    assert!(accepted, "{output}");
    assert!(output.contains("raw HTTP request"), "{output}");
    assert!(output.contains("entry #1 matched secret #2"), "{output}");

    let lf = raw_http("\n", BODY, false);
    let capture = parse_capture(lf.as_bytes()).unwrap();
    assert_eq!(capture.body, BODY.as_bytes());
    assert_eq!(capture.header("webhook-timestamp"), Some("1700000000"));
    assert_eq!(capture.headers[2].0, "webhook-id", "names are lower-cased");
    assert!(explain_capture(&capture, &keys(), &Policy::default(), None, TS).accepted());
}

#[test]
fn a_raw_capture_without_content_length_and_a_final_newline_is_diagnosed() {
    let lf = format!("{}\n", raw_http("\n", BODY, false));
    let (output, accepted) = verify_file(lf.as_bytes(), Some(TS), false, false);
    assert!(!accepted);
    assert!(
        output.contains("verdict: rejected: invalid_signature"),
        "{output}"
    );
    assert!(
        output.contains("the body was changed after signing: a trailing newline was added"),
        "{output}"
    );
}

#[test]
fn a_tampered_capture_is_an_invalid_signature_and_re_serialisation_is_named() {
    // A value changed: nothing to recognise.
    let tampered = BODY.replace("123", "124");
    let capture = event_json(BODY.as_bytes(), tampered.as_bytes()).to_string();
    let (output, accepted) = verify_file(capture.as_bytes(), Some(TS), false, true);
    assert!(!accepted);
    let report: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(report["verdict"]["code"], "invalid_signature");
    assert_eq!(report["capture"]["format"], "event_json");
    assert_eq!(report["diagnosis"][0]["kind"], "no_key_matched");

    // Re-serialised with spaces (Python's default), as a relaying service might do.
    let spaced = r#"{"type": "batch.succeeded", "data": {"id": "batches/123"}}"#;
    let capture = event_json(BODY.as_bytes(), spaced.as_bytes()).to_string();
    let (output, accepted) = verify_file(capture.as_bytes(), Some(TS), false, false);
    assert!(!accepted);
    assert!(
        output.contains("verdict: rejected: invalid_signature"),
        "{output}"
    );
    assert!(
        output.contains("the body was changed after signing: the JSON was re-serialised"),
        "{output}"
    );
    assert!(output.contains("written compactly"), "{output}");
}

#[test]
fn a_stale_capture_is_too_old_by_its_age_and_verifies_at_receipt() {
    let capture = event_json(BODY.as_bytes(), BODY.as_bytes()).to_string();
    let (output, accepted) = verify_file(capture.as_bytes(), Some(TS + 3600), false, false);
    assert!(!accepted);
    assert!(
        output.contains("verdict: rejected: timestamp_too_old"),
        "{output}"
    );
    assert!(output.contains("3600 s old"), "{output}");
    assert!(output.contains("The signature is good"), "{output}");

    let (output, _) = verify_file(capture.as_bytes(), Some(TS + 3600), false, true);
    let report: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(report["verdict"]["code"], "timestamp_too_old");
    assert_eq!(report["timestamp"]["age_secs"], 3600);
    assert_eq!(report["timestamp"]["tolerance_secs"], 300);
    assert_eq!(
        report["diagnosis"][0]["kind"],
        serde_json::to_value(DiagnosisKind::TimestampOutsideTolerance).unwrap()
    );

    let (output, accepted) = verify_file(capture.as_bytes(), None, true, false);
    assert!(accepted, "{output}");
    assert!(output.contains("0 s (the same second as now)"), "{output}");
}

#[test]
fn events_show_json_prefers_body_base64_for_the_exact_bytes() {
    // Not UTF-8: `events show` prints "body": null, and only body_base64 has the bytes.
    let binary = b"\xff\xfe binary";
    let capture = parse_capture(event_json(binary, binary).to_string().as_bytes()).unwrap();
    assert_eq!(capture.body, binary);
    // When both are there and differ (the text went through a tool), base64 wins.
    let mut value = event_json(BODY.as_bytes(), BODY.as_bytes());
    value["body"] = json!("re-encoded text");
    let capture = parse_capture(value.to_string().as_bytes()).unwrap();
    assert_eq!(capture.body, BODY.as_bytes());
}

#[test]
fn a_hand_written_json_capture_is_read_with_any_header_case() {
    let text = json!({
        "headers": {
            "Webhook-Id": ID,
            "WEBHOOK-TIMESTAMP": TS,
            "webhook-Signature": signature(BODY.as_bytes()),
        },
        "body": BODY,
    })
    .to_string();
    let (capture, format) = parse_with_format(text.as_bytes()).unwrap();
    assert_eq!(format, CaptureFormat::Json);
    let headers = capture.webhook_headers();
    assert_eq!(headers.id, Some(ID));
    assert_eq!(headers.timestamp, Some("1700000000"));
    assert!(explain_capture(&capture, &keys(), &Policy::default(), None, TS).accepted());

    let pairs = json!({
        "headers": [["Webhook-Id", ID], ["Webhook-Timestamp", TS.to_string()],
                    ["Webhook-Signature", signature(BODY.as_bytes())]],
        "body_base64": STANDARD.encode(BODY),
    })
    .to_string();
    let capture = parse_capture(pairs.as_bytes()).unwrap();
    assert!(explain_capture(&capture, &keys(), &Policy::default(), None, TS).accepted());
}

#[test]
fn a_chunked_raw_capture_is_reassembled() {
    let (first, second) = BODY.split_at(10);
    let request = format!(
        "POST /webhooks/gemini HTTP/1.1\r\nWebhook-Id: {ID}\r\nWebhook-Timestamp: {TS}\r\n\
         Webhook-Signature: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        signature(BODY.as_bytes()),
        first.len(),
        second.len()
    );
    let capture = parse_capture(request.as_bytes()).unwrap();
    assert_eq!(capture.body, BODY.as_bytes());
}

#[test]
fn a_webhook_header_that_is_not_visible_ascii_is_refused_as_the_receiver_would() {
    let request = format!(
        "POST /webhooks/gemini HTTP/1.1\nWebhook-Id: msg_\u{e9}\nWebhook-Timestamp: {TS}\n\
         Webhook-Signature: {}\n\n{BODY}",
        signature(BODY.as_bytes())
    );
    let (output, accepted) = verify_file(request.as_bytes(), Some(TS), false, false);
    assert!(!accepted);
    assert!(
        output.contains("verdict: rejected: invalid_header"),
        "{output}"
    );
    assert!(output.contains("not visible ASCII"), "{output}");
}

#[test]
fn malformed_captures_are_refused_with_a_reason() {
    let refused = |text: &str| parse_capture(text.as_bytes()).unwrap_err();
    assert!(matches!(refused("  \n"), CaptureError::Empty));
    assert!(matches!(refused("{\"headers\": "), CaptureError::Json(_)));
    assert!(matches!(
        refused("{\"body\": \"x\"}"),
        CaptureError::NotACaptureObject
    ));
    assert!(matches!(
        refused(r#"{"headers": {}, "body": {"a": 1}}"#),
        CaptureError::BodyNotText
    ));
    assert!(matches!(
        refused(r#"{"headers": {}, "body": null}"#),
        CaptureError::NoBody
    ));
    assert!(matches!(
        refused(r#"{"headers": {}, "body_base64": "not base64!"}"#),
        CaptureError::BodyBase64(Some(_))
    ));
    assert!(matches!(
        refused(r#"{"headers": {"webhook-id": ["a"]}, "body": ""}"#),
        CaptureError::HeaderValue(name) if name == "webhook-id"
    ));
    assert!(matches!(
        refused("POST / HTTP/1.1\r\nWebhook-Id: x\r\n"),
        CaptureError::NoBlankLine
    ));
    assert!(matches!(
        refused("POST / HTTP/1.1\r\nthis is not a header\r\n\r\n"),
        CaptureError::HeaderLine { line: 2 }
    ));
    assert!(matches!(
        refused("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"),
        CaptureError::Truncated {
            declared: 10,
            available: 5
        }
    ));
    assert!(matches!(
        refused("POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n"),
        CaptureError::ContentLength(_)
    ));
    assert!(matches!(
        refused("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        CaptureError::Chunked(_)
    ));
}

#[test]
fn a_missing_file_or_receipt_time_is_an_error() {
    let missing = args(
        PathBuf::from("/nonexistent/capture.json"),
        None,
        false,
        false,
    );
    let error = block_on(run_verify(&missing, &keys(), &Policy::default(), None)).unwrap_err();
    assert!(matches!(error, CaptureError::Read { .. }));

    let text = json!({"headers": {"webhook-timestamp": "soon"}, "body": ""}).to_string();
    let path = temp_file(text.as_bytes());
    let result = block_on(run_verify(
        &args(path.clone(), None, true, false),
        &keys(),
        &Policy::default(),
        None,
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(result, Err(CaptureError::NoReceiptTime)));
}

#[test]
fn the_arguments_parse_as_documented() {
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        verify: VerifyArgs,
    }
    let cli = Cli::try_parse_from(["verify", "-", "--now", "1700000000", "--json"]).unwrap();
    assert_eq!(cli.verify.file, PathBuf::from("-"));
    assert_eq!(cli.verify.now, Some(1_700_000_000));
    assert!(cli.verify.json && !cli.verify.at_receipt);
    assert!(Cli::try_parse_from(["verify", "f", "--now", "1", "--at-receipt"]).is_err());
    assert!(Cli::try_parse_from(["verify"]).is_err());
}
