//! Following one event's pointer: plan (pure) → fetch with the API key → store → a result.

use serde_json::{Value, json};

use crate::gemini::batch::{self, BatchResults};
use crate::gemini::gcs::{GcsError, GcsReader};
use crate::gemini::{
    GeminiClient, GeminiError, Plan, PointerPolicy, ResourceKind, Unfollowable, Work, pointer,
};
use crate::queue::retry::FailureKind;
use crate::results::{ResultKey, ResultsError, ResultsStore, StoredObject, StreamError};
use crate::store::{ClaimedJob, JobResult, Store, StoredResult};

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// For `jobs.errors` and the CLI: never contains the API key or a signed URL.
    pub message: String,
    pub kind: FailureKind,
    /// What to keep even though the job failed (e.g. why a pointer was not followable).
    /// Boxed: it is rare, and keeps the `Err` side of every attempt small.
    pub result: Option<Box<JobResult>>,
}

impl Failure {
    fn permanent(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: FailureKind::Permanent,
            result: None,
        }
    }

    fn from_gemini(error: &GeminiError) -> Failure {
        let kind = if error.is_retryable() {
            FailureKind::Transient {
                retry_after: error.retry_after(),
            }
        } else if error.status() == Some(reqwest::StatusCode::NOT_FOUND) {
            FailureKind::NotFound
        } else {
            FailureKind::Permanent
        };
        Failure {
            message: crate::telemetry::error_chain(error),
            kind,
            result: None,
        }
    }

    fn from_results(error: &ResultsError) -> Failure {
        // A store that is full, down or refusing us now may not be later.
        Failure {
            message: format!(
                "storing the result: {}",
                crate::telemetry::error_chain(error)
            ),
            kind: FailureKind::Transient { retry_after: None },
            result: None,
        }
    }

    fn from_gcs(error: &GcsError) -> Failure {
        let kind = if error.is_retryable() {
            FailureKind::Transient { retry_after: None }
        } else if error.is_not_found() {
            FailureKind::NotFound
        } else {
            FailureKind::Permanent
        };
        Failure {
            message: crate::telemetry::error_chain(error),
            kind,
            result: None,
        }
    }

    fn from_stream(error: &StreamError<GeminiError>) -> Failure {
        match error {
            StreamError::Source(gemini) => Failure::from_gemini(gemini),
            StreamError::Store(store) => Failure::from_results(store),
        }
    }
}

/// Follows pointers. Cheap to share: the client and stores are handles.
#[derive(Debug, Clone)]
pub struct Follower {
    /// `None` when no API key is configured: anything that needs Gemini is then dead-lettered
    /// with that reason (and can be retried once the key is set).
    pub gemini: Option<GeminiClient>,
    pub results: ResultsStore,
    pub policy: PointerPolicy,
    pub store: Store,
    /// Reads `gs://` pointers, when Cloud Storage credentials are configured (then
    /// `policy.follow_gcs` is set).
    pub gcs: Option<GcsReader>,
}

impl Follower {
    /// Follows the job's pointer. Besides the result, returns the fetched interaction JSON,
    /// which the hand-off may send inline.
    /// `plan` is the job's event planned once by the caller ([`Follower::plan`]), which the
    /// hand-off uses too.
    pub async fn follow(
        &self,
        job: &ClaimedJob,
        plan: &Plan,
    ) -> Result<(JobResult, Option<Value>), Failure> {
        let mut inline = None;
        let result = self.follow_into(job, plan, &mut inline).await?;
        Ok((result, inline))
    }

    /// What the job's event asks for (pure; see [`pointer::plan`]).
    pub fn plan(&self, job: &ClaimedJob) -> Plan {
        pointer::plan(&job.body, &self.policy)
    }

    async fn follow_into(
        &self,
        job: &ClaimedJob,
        plan: &Plan,
        inline: &mut Option<Value>,
    ) -> Result<JobResult, Failure> {
        let mut summary = json!({});
        if let Some(metadata) = &plan.user_metadata {
            summary["user_metadata"] = metadata.clone();
        }
        let result = |outcome, stored: Option<&StoredObject>, summary: Value| JobResult {
            resource_kind: plan.kind.as_str(),
            resource_id: plan.resource_id.clone(),
            outcome,
            location: stored.map(|s| s.location.clone()),
            size_bytes: stored.map(|s| s.size_bytes as i64),
            sha256: stored.map(|s| s.sha256_hex.clone()),
            summary,
        };
        match &plan.work {
            Work::Nothing => Ok(result("nothing", None, summary)),
            Work::Record {
                error_code,
                error_message,
            } => {
                summary["error_code"] = json!(error_code);
                summary["error_message"] = json!(error_message);
                Ok(result("recorded", None, summary))
            }
            Work::NotFollowable { reason } => {
                summary["reason"] = json!(reason.to_string());
                Err(Failure {
                    message: format!("not followed: {reason}"),
                    kind: FailureKind::Permanent,
                    result: Some(Box::new(result("not_followable", None, summary))),
                })
            }
            Work::FetchInteraction { id } => {
                let gemini = self.client()?;
                let interaction = gemini
                    .get_interaction(id)
                    .await
                    .map_err(|e| Failure::from_gemini(&e))?;
                let key = ResultKey::interaction(plan.resource_id.as_deref().unwrap_or(id));
                let stored = self
                    .results
                    .store_bytes(&key, interaction.raw.clone())
                    .await
                    .map_err(|e| Failure::from_results(&e))?;
                summary["status"] = json!(interaction.status);
                *inline = Some(interaction.json);
                Ok(result("stored", Some(&stored), summary))
            }
            Work::DownloadFile { .. } | Work::DownloadUrl { .. } | Work::DownloadGcs { .. } => {
                if let Some(reused) = self.reusable(job, plan.kind, &plan.resource_id).await {
                    return Ok(reused_result(plan, reused, summary));
                }
                let stored = self.download(plan, &plan.work).await?;
                add_download_summary(&mut summary, plan.kind, &stored);
                Ok(result("stored", Some(&stored), summary))
            }
            Work::LookUpBatch { id } => {
                if let Some(reused) = self.reusable(job, plan.kind, &plan.resource_id).await {
                    return Ok(reused_result(plan, reused, summary));
                }
                let batch = self
                    .client()?
                    .get_batch(id)
                    .await
                    .map_err(|e| Failure::from_gemini(&e))?;
                let stored = match batch::results_of(&batch) {
                    BatchResults::File(uri) => {
                        let work = pointer::results_file(&uri, &self.policy);
                        if let Work::NotFollowable { reason } = &work {
                            summary["reason"] = json!(reason.to_string());
                            return Err(Failure {
                                message: format!(
                                    "not followed: the batch's results file: {reason}"
                                ),
                                kind: FailureKind::Permanent,
                                result: Some(Box::new(result("not_followable", None, summary))),
                            });
                        }
                        self.download(plan, &work).await?
                    }
                    BatchResults::Inline(responses) => {
                        summary["inline"] = json!(true);
                        let key =
                            ResultKey::batch_results(plan.resource_id.as_deref().unwrap_or(id));
                        self.results
                            .store_bytes(&key, batch::to_jsonl(&responses).into())
                            .await
                            .map_err(|e| Failure::from_results(&e))?
                    }
                    // A webhook can outrun the resource it announces: a few more tries.
                    BatchResults::NotReady { state } => {
                        return Err(Failure {
                            message: format!(
                                "batch {id} has no results yet (state {})",
                                state.as_deref().unwrap_or("unknown")
                            ),
                            kind: FailureKind::NotFound,
                            result: None,
                        });
                    }
                    BatchResults::Missing { state } => {
                        return Err(Failure::permanent(format!(
                            "batch {id} names neither a responsesFile nor inlinedResponses (state {})",
                            state.as_deref().unwrap_or("unknown")
                        )));
                    }
                };
                add_download_summary(&mut summary, plan.kind, &stored);
                Ok(result("stored", Some(&stored), summary))
            }
        }
    }

    /// Downloads what a file pointer names into the results store: a Gemini file or an
    /// allowed URL with the API key, a `gs://` object with Cloud Storage credentials.
    async fn download(&self, plan: &Plan, work: &Work) -> Result<StoredObject, Failure> {
        match work {
            Work::DownloadFile { file_id } => {
                let key = download_key(plan.kind, plan.resource_id.as_deref(), file_id);
                let download = self
                    .client()?
                    .download_file(file_id)
                    .await
                    .map_err(|e| Failure::from_gemini(&e))?;
                self.store_download(&key, download).await
            }
            Work::DownloadUrl { url } => {
                let fallback = url
                    .path_segments()
                    .and_then(|mut s| s.next_back())
                    .unwrap_or("download");
                let key = download_key(plan.kind, plan.resource_id.as_deref(), fallback);
                let download = self
                    .client()?
                    .download_url(url)
                    .await
                    .map_err(|e| Failure::from_gemini(&e))?;
                self.store_download(&key, download).await
            }
            Work::DownloadGcs { bucket, object } => {
                let fallback = object.rsplit('/').next().unwrap_or(object);
                let key = download_key(plan.kind, plan.resource_id.as_deref(), fallback);
                // Planned only when credentials are configured, so a reader exists; checked
                // anyway rather than assumed.
                let gcs = self.gcs.as_ref().ok_or_else(|| {
                    Failure::permanent(format!("not followed: {}", Unfollowable::GcsNotConfigured))
                })?;
                let stream = gcs
                    .open(bucket, object)
                    .await
                    .map_err(|e| Failure::from_gcs(&e))?;
                self.results
                    .store_stream(&key, stream)
                    .await
                    .map_err(|e| match e {
                        StreamError::Source(gcs) => Failure::from_gcs(&gcs),
                        StreamError::Store(store) => Failure::from_results(&store),
                    })
            }
            _ => Err(Failure::permanent("not a download")),
        }
    }

    fn client(&self) -> Result<&GeminiClient, Failure> {
        self.gemini
            .as_ref()
            .ok_or_else(|| Failure::permanent("GEMINI_API_KEY is not configured"))
    }

    async fn store_download(
        &self,
        key: &ResultKey,
        download: crate::gemini::Download,
    ) -> Result<StoredObject, Failure> {
        self.results
            .store_stream(key, download.into_stream())
            .await
            .map_err(|e| Failure::from_stream(&e))
    }

    /// Batch results and videos do not change once produced, so a resource another delivery
    /// already stored is not downloaded again. (Interactions change state: always refetched.)
    async fn reusable(
        &self,
        job: &ClaimedJob,
        kind: ResourceKind,
        resource_id: &Option<String>,
    ) -> Option<StoredResult> {
        if !matches!(kind, ResourceKind::Batch | ResourceKind::Video) {
            return None;
        }
        let resource_id = resource_id.as_deref()?;
        match self
            .store
            .find_stored_result(kind.as_str(), resource_id, job.id)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                // Not finding it only costs a second download.
                tracing::warn!(error = %crate::telemetry::error_chain(&error), "looking up a stored result failed");
                None
            }
        }
    }
}

fn download_key(kind: ResourceKind, resource_id: Option<&str>, fallback: &str) -> ResultKey {
    let id = resource_id.unwrap_or(fallback);
    match kind {
        ResourceKind::Video => ResultKey::video(id),
        _ => ResultKey::batch_results(id),
    }
}

fn add_download_summary(summary: &mut Value, kind: ResourceKind, stored: &StoredObject) {
    if kind == ResourceKind::Batch {
        summary["lines"] = json!(stored.lines);
        summary["error_lines"] = json!(stored.error_lines);
    }
}

fn reused_result(
    plan: &crate::gemini::Plan,
    reused: StoredResult,
    mut summary: Value,
) -> JobResult {
    if let Value::Object(previous) = reused.summary {
        for (key, value) in previous {
            if key != "user_metadata" {
                summary[key] = value;
            }
        }
    }
    summary["reused"] = json!(true);
    JobResult {
        resource_kind: plan.kind.as_str(),
        resource_id: plan.resource_id.clone(),
        outcome: "stored",
        location: reused.location,
        size_bytes: reused.size_bytes,
        sha256: reused.sha256,
        summary,
    }
}
