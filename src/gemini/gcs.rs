//! Reading `gs://bucket/object` pointers (the one published `batch.succeeded` example names
//! one) with Google Cloud Storage credentials, through `object_store`'s GCS client, never with
//! the Gemini key.
//!
//! Credentials come as Google users configure them, read by `object_store`:
//! `GOOGLE_SERVICE_ACCOUNT` (or `GOOGLE_SERVICE_ACCOUNT_PATH`: a service account key file),
//! `GOOGLE_SERVICE_ACCOUNT_KEY` (the key's JSON itself), `GOOGLE_APPLICATION_CREDENTIALS`, or
//! gcloud's application default credentials file, or on Cloud Run the service's own account
//! (from the metadata server). Without any of them `gs://` pointers are dead-lettered with
//! that reason (see [`credentials_configured`]).

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};

/// The variables `object_store` reads credentials from.
pub const CREDENTIAL_VARIABLES: [&str; 4] = [
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
];
/// gcloud's application default credentials, under `$HOME`.
const ADC_FILE: &str = ".config/gcloud/application_default_credentials.json";
/// One request's limit. `object_store` resumes a body cut off by it with a range request, so
/// a large file still downloads whole; a stalled one fails instead of holding a worker.
const REQUEST_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("gs://{bucket}: the Cloud Storage client could not be set up")]
    Setup {
        bucket: String,
        #[source]
        source: object_store::Error,
    },
    #[error("gs://{bucket}/{object} was not found")]
    NotFound { bucket: String, object: String },
    #[error(
        "gs://{bucket}/{object}: access denied by Cloud Storage (check the credentials' permissions)"
    )]
    Denied {
        bucket: String,
        object: String,
        #[source]
        source: object_store::Error,
    },
    #[error("gs://{bucket}/{object}: the object name is not usable")]
    BadObject { bucket: String, object: String },
    #[error("reading gs://{bucket}/{object} failed")]
    Read {
        bucket: String,
        object: String,
        #[source]
        source: object_store::Error,
    },
}

impl GcsError {
    /// A missing object, a denial, a bad name or a broken set-up fail the same way again;
    /// anything else (5xx, timeouts, a cut-off body) may not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GcsError::Read { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, GcsError::NotFound { .. })
    }
}

/// Whether any Cloud Storage credentials are configured, by the names in `vars` (and the ADC
/// file under `home`).
pub fn credentials_configured<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    home: Option<&FsPath>,
) -> bool {
    vars.into_iter().any(|(name, value)| {
        // Cloud Run (K_SERVICE) always has a service account behind its metadata server,
        // which object_store falls back to.
        (CREDENTIAL_VARIABLES.contains(&name) || name == "K_SERVICE") && !value.trim().is_empty()
    }) || home.is_some_and(|home| home.join(ADC_FILE).is_file())
}

/// Reads `gs://` objects. One client per bucket, kept, so credentials' tokens are reused.
#[derive(Debug, Clone, Default)]
pub struct GcsReader {
    buckets: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl GcsReader {
    /// A reader when the environment has credentials, else `None`.
    pub fn from_env() -> Option<GcsReader> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        credentials_configured(
            vars.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            home.as_deref(),
        )
        .then(|| {
            let reader = GcsReader::default();
            // A credentials file that cannot be read fails every gs:// job: say so at start,
            // without stopping a worker whose other jobs are fine.
            let check = reader.bucket("gemhook-credentials-check").map(|_| ());
            reader.buckets.lock().unwrap_or_else(|e| e.into_inner()).clear();
            if let Err(error) = check {
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&error),
                    "the Cloud Storage credentials cannot be used: gs:// pointers will be dead-lettered until they are fixed"
                );
            }
            reader
        })
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, GcsError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = buckets.get(bucket) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_config(
                    GoogleConfigKey::Client(ClientConfigKey::Timeout),
                    format!("{REQUEST_TIMEOUT_SECS}s"),
                )
                // The worker retries with its own backoff and keeps each attempt's error;
                // only brief hiccups are retried here.
                .with_retry(RetryConfig {
                    max_retries: 2,
                    retry_timeout: Duration::from_secs(60),
                    ..RetryConfig::default()
                })
                .build()
                .map_err(|source| GcsError::Setup {
                    bucket: bucket.to_owned(),
                    source,
                })?,
        );
        buckets.insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    /// The object's bytes as they arrive.
    pub async fn open(
        &self,
        bucket: &str,
        object: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, GcsError>> + Send + 'static, GcsError> {
        let store = self.bucket(bucket)?;
        let path = Path::parse(object).map_err(|_| GcsError::BadObject {
            bucket: bucket.to_owned(),
            object: object.to_owned(),
        })?;
        let classify = {
            let (bucket, object) = (bucket.to_owned(), object.to_owned());
            move |source: object_store::Error| classify(&bucket, &object, source)
        };
        let got = store.get(&path).await.map_err(&classify)?;
        Ok(got.into_stream().map(move |chunk| chunk.map_err(&classify)))
    }
}

fn classify(bucket: &str, object: &str, source: object_store::Error) -> GcsError {
    let (bucket, object) = (bucket.to_owned(), object.to_owned());
    match source {
        object_store::Error::NotFound { .. } => GcsError::NotFound { bucket, object },
        source @ (object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. }) => GcsError::Denied {
            bucket,
            object,
            source,
        },
        source => GcsError::Read {
            bucket,
            object,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_of_googles_credential_variables_counts_and_nothing_else_does() {
        for name in CREDENTIAL_VARIABLES {
            assert!(
                credentials_configured([(name, "/etc/key.json")], None),
                "{name}"
            );
        }
        assert!(!credentials_configured(
            [("GOOGLE_SERVICE_ACCOUNT", " ")],
            None
        ));
        assert!(!credentials_configured([("GEMINI_API_KEY", "k")], None));
        assert!(credentials_configured([("K_SERVICE", "gemhook")], None));
        let home = std::env::temp_dir().join(format!("gemhook-no-adc-{}", std::process::id()));
        assert!(!credentials_configured([], Some(&home)));
    }

    #[test]
    fn the_gcloud_default_credentials_file_counts() {
        let home = std::env::temp_dir().join(format!("gemhook-adc-{}", std::process::id()));
        let file = home.join(ADC_FILE);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{}").unwrap();
        assert!(credentials_configured([], Some(&home)));
        let _ = std::fs::remove_dir_all(&home);
    }
}
