//! Pure: which resources the stand-in has, and in what state, read from their ids alone; and
//! the ids `gemhook send` builds so that its events point at them.
//!
//! The stand-in keeps no state. An id in one of Gemini's shapes names a resource that exists,
//! in its happy state; a trailing marker picks another state, and `-missing` makes any id
//! unknown, the way a payment provider's test mode reserves card numbers that decline:
//!
//! | id                                             | what the stand-in has                        |
//! |------------------------------------------------|----------------------------------------------|
//! | `batches/<x>`                                  | a succeeded batch, results in `files/batch-<x>` |
//! | `batches/<x>-failed`, `-expired`, `-cancelled` | a batch in that state, without results       |
//! | `interactions/<x>` (`v1_Chd…`)                 | a completed interaction                      |
//! | `interactions/<x>-requires_action`, `-failed`, `-cancelled` | an interaction with that status |
//! | `models/<model>/operations/<x>`                | a finished Veo operation, video in `files/video-<x>` |
//! | `files/batch-<x>`, `files/video-<x>`           | that batch's JSONL results, that video's MP4 |
//! | any other file; any id ending in `-missing`    | nothing: 404                                 |
//!
//! Ids arrive here without their collection prefix (`x`, not `batches/x`), as the routes
//! extract them.

/// The marker that makes any resource unknown to the stand-in (a 404).
pub const MISSING: &str = "missing";

/// The Veo model `gemhook send` names in its video operations.
pub const VEO_MODEL: &str = "veo-3.1-generate-preview";

const BATCH_RESULTS_PREFIX: &str = "batch-";
const VIDEO_PREFIX: &str = "video-";

/// A batch's state, as `metadata.state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

impl BatchState {
    /// The `JOB_STATE_*` name (the shared notes' spelling, which the Python SDK uses).
    pub fn job_state(self) -> &'static str {
        match self {
            BatchState::Succeeded => "JOB_STATE_SUCCEEDED",
            BatchState::Failed => "JOB_STATE_FAILED",
            BatchState::Expired => "JOB_STATE_EXPIRED",
            BatchState::Cancelled => "JOB_STATE_CANCELLED",
        }
    }

    fn marker(self) -> Option<&'static str> {
        match self {
            BatchState::Succeeded => None,
            BatchState::Failed => Some("failed"),
            BatchState::Expired => Some("expired"),
            BatchState::Cancelled => Some("cancelled"),
        }
    }

    const MARKED: [BatchState; 3] = [
        BatchState::Failed,
        BatchState::Expired,
        BatchState::Cancelled,
    ];
}

/// An interaction's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InteractionStatus {
    Completed,
    RequiresAction,
    Failed,
    Cancelled,
}

impl InteractionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionStatus::Completed => "completed",
            InteractionStatus::RequiresAction => "requires_action",
            InteractionStatus::Failed => "failed",
            InteractionStatus::Cancelled => "cancelled",
        }
    }

    fn marker(self) -> Option<&'static str> {
        match self {
            InteractionStatus::Completed => None,
            other => Some(other.as_str()),
        }
    }

    const MARKED: [InteractionStatus; 3] = [
        InteractionStatus::RequiresAction,
        InteractionStatus::Failed,
        InteractionStatus::Cancelled,
    ];
}

/// A file the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevFile<'a> {
    /// The JSONL results of the succeeded batch `batches/<batch>`.
    BatchResults { batch: &'a str },
    /// The MP4 of the operation `<operation>`.
    Video { operation: &'a str },
}

impl DevFile<'_> {
    pub fn mime_type(&self) -> &'static str {
        match self {
            DevFile::BatchResults { .. } => "application/jsonl",
            DevFile::Video { .. } => "video/mp4",
        }
    }
}

/// `(base, marker)` when `id` ends in `-<marker>` for one of `markers` (or [`MISSING`]).
fn split_marker<'a>(id: &'a str, markers: &[&str]) -> (&'a str, Option<&'a str>) {
    match id.rsplit_once('-') {
        Some((base, marker))
            if !base.is_empty() && (marker == MISSING || markers.contains(&marker)) =>
        {
            (base, Some(marker))
        }
        _ => (id, None),
    }
}

/// The state of batch `batches/<batch>`, or `None` when the stand-in has no such batch.
pub fn batch_state(batch: &str) -> Option<BatchState> {
    let markers = BatchState::MARKED.map(|s| s.marker().unwrap_or_default());
    match split_marker(batch, &markers) {
        (_, None) => Some(BatchState::Succeeded),
        (_, Some(MISSING)) => None,
        (_, Some(marker)) => BatchState::MARKED
            .into_iter()
            .find(|s| s.marker() == Some(marker)),
    }
}

/// The status of interaction `<id>`, or `None` when the stand-in has no such interaction.
pub fn interaction_status(id: &str) -> Option<InteractionStatus> {
    let markers = InteractionStatus::MARKED.map(|s| s.marker().unwrap_or_default());
    match split_marker(id, &markers) {
        (_, None) => Some(InteractionStatus::Completed),
        (_, Some(MISSING)) => None,
        (_, Some(marker)) => InteractionStatus::MARKED
            .into_iter()
            .find(|s| s.marker() == Some(marker)),
    }
}

/// Whether the stand-in has the video operation `models/<model>/operations/<operation>`.
pub fn operation_exists(operation: &str) -> bool {
    split_marker(operation, &[]).1.is_none()
}

/// The file `files/<file_id>`, when the stand-in has it: only a succeeded batch has results.
pub fn file(file_id: &str) -> Option<DevFile<'_>> {
    if let Some(batch) = file_id.strip_prefix(BATCH_RESULTS_PREFIX) {
        return (batch_state(batch) == Some(BatchState::Succeeded))
            .then_some(DevFile::BatchResults { batch });
    }
    let operation = file_id.strip_prefix(VIDEO_PREFIX)?;
    operation_exists(operation).then_some(DevFile::Video { operation })
}

/// The last segment of a resource name: `batches/x` → `x`.
fn last_segment(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `batches/<slug>` with the marker for `state`.
pub fn batch_name(slug: &str, state: BatchState) -> String {
    marked(&format!("batches/{slug}"), state.marker())
}

/// The results file of a batch: `batches/<x>` → `files/batch-<x>`.
pub fn batch_results_file(batch_name: &str) -> String {
    format!("files/{BATCH_RESULTS_PREFIX}{}", last_segment(batch_name))
}

/// An interaction id with the marker for `status`.
pub fn interaction_name(base: &str, status: InteractionStatus) -> String {
    marked(base, status.marker())
}

/// `models/<VEO_MODEL>/operations/<operation>`.
pub fn video_operation_name(operation: &str) -> String {
    format!("models/{VEO_MODEL}/operations/{operation}")
}

/// The video file of an operation: `models/m/operations/x` → `files/video-x`.
pub fn video_file(operation_name: &str) -> String {
    format!("files/{VIDEO_PREFIX}{}", last_segment(operation_name))
}

fn marked(base: &str, marker: Option<&str>) -> String {
    match marker {
        Some(marker) => format!("{base}-{marker}"),
        None => base.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_batch_id_succeeded_and_a_marker_picks_another_state() {
        assert_eq!(batch_state("abc123"), Some(BatchState::Succeeded));
        assert_eq!(batch_state("abc123-failed"), Some(BatchState::Failed));
        assert_eq!(batch_state("abc123-expired"), Some(BatchState::Expired));
        assert_eq!(batch_state("abc123-cancelled"), Some(BatchState::Cancelled));
        assert_eq!(batch_state("abc123-missing"), None);
        // Not a batch marker: part of the id.
        assert_eq!(
            batch_state("abc123-requires_action"),
            Some(BatchState::Succeeded)
        );
        assert_eq!(batch_state("-failed"), Some(BatchState::Succeeded));
    }

    #[test]
    fn interaction_markers_pick_the_status() {
        assert_eq!(
            interaction_status("v1_ChdAbc"),
            Some(InteractionStatus::Completed)
        );
        assert_eq!(
            interaction_status("v1_ChdAbc-requires_action"),
            Some(InteractionStatus::RequiresAction)
        );
        assert_eq!(
            interaction_status("v1_ChdAbc-failed"),
            Some(InteractionStatus::Failed)
        );
        assert_eq!(
            interaction_status("v1_ChdAbc-cancelled"),
            Some(InteractionStatus::Cancelled)
        );
        assert_eq!(interaction_status("v1_ChdAbc-missing"), None);
    }

    #[test]
    fn only_succeeded_batches_and_existing_operations_have_files() {
        assert_eq!(
            file("batch-abc"),
            Some(DevFile::BatchResults { batch: "abc" })
        );
        assert_eq!(file("batch-abc-failed"), None);
        assert_eq!(file("batch-abc-missing"), None);
        assert_eq!(file("video-op1"), Some(DevFile::Video { operation: "op1" }));
        assert_eq!(file("video-op1-missing"), None);
        assert_eq!(file("abc"), None);
        assert_eq!(file("onegib"), None);
    }

    #[test]
    fn built_names_point_at_what_the_stand_in_serves() {
        let batch = batch_name("xyz", BatchState::Succeeded);
        assert_eq!(batch, "batches/xyz");
        assert_eq!(batch_results_file(&batch), "files/batch-xyz");
        let id = batch_results_file(&batch);
        assert!(file(id.trim_start_matches("files/")).is_some());
        assert_eq!(
            batch_name("xyz", BatchState::Expired),
            "batches/xyz-expired"
        );
        assert_eq!(
            interaction_name("v1_ChdQ", InteractionStatus::RequiresAction),
            "v1_ChdQ-requires_action"
        );
        let operation = video_operation_name("op9");
        assert_eq!(operation, "models/veo-3.1-generate-preview/operations/op9");
        assert_eq!(video_file(&operation), "files/video-op9");
        assert_eq!(file("video-op9"), Some(DevFile::Video { operation: "op9" }));
    }
}
