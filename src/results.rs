//! The results store: where followed pointers land, on the `object_store` crate.
//!
//! A local directory by default (`GEMHOOK_RESULTS_DIR`, `./data/results`), or S3 / GCS when
//! `GEMHOOK_RESULTS_URL` names one (`s3://bucket/prefix`, `gs://bucket/prefix`; credentials
//! from the environment, as `object_store`'s `from_env` builders read them).
//!
//! Two guarantees the worker relies on:
//! - **Nothing half-written is ever visible at a final key.** Streams go through a multipart
//!   upload, which publishes the object only when it completes: on a local directory
//!   `object_store` writes to a sibling `<key>#<n>` file and renames it over the key at the
//!   end (rename is atomic on POSIX); on S3 and GCS the object exists only after the
//!   "complete multipart upload" call. A failed stream aborts the upload. A process killed
//!   mid-stream leaves at most a `<key>#<n>` file (local; `object_store` never lists it) or an
//!   incomplete multipart upload (S3/GCS; a bucket lifecycle rule reclaims it), never a
//!   partial object at the key. Not covered: the local rename is not fsynced, so after a power
//!   loss (not a process crash) a filesystem may keep the rename without the data.
//! - **Keys derive from the resource** ([`ResultKey`]), so storing the same resource twice
//!   replaces the object atomically with the same content.
//!
//! While streaming, [`store_stream`](ResultsStore::store_stream) computes the size, the
//! SHA-256 and the JSONL line and error-line counts, holding at most one upload part in memory
//! besides the parts in flight.

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use url::Url;

/// Default local directory for results.
pub const DEFAULT_RESULTS_DIR: &str = "./data/results";
/// Size of each upload part: S3's minimum for all but the last part.
const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts uploading at once. Memory held is about `(PARTS_IN_FLIGHT + 1) * PART_BYTES`, well
/// within the 64 MiB budget the issue sets for a multi-GB download.
const PARTS_IN_FLIGHT: usize = 2;
/// Longest key segment derived from an id; longer ones are shortened with a hash so that
/// file-system name limits (255 bytes) are never hit.
const MAX_SEGMENT_BYTES: usize = 128;

/// Errors of the results store. All of them may be transient (a bucket unreachable, a disk
/// full), except a configuration the store cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("results URL {url:?} is not supported (use s3://, gs://, file:// or memory://)")]
    UnsupportedUrl { url: String },
    #[error("results URL is not a valid URL")]
    InvalidUrl(#[source] url::ParseError),
    #[error("the results directory {path:?} cannot be created or used")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the results store failed")]
    Store(#[from] object_store::Error),
    #[error("the results key is not a valid object path")]
    Path(#[from] object_store::path::Error),
}

/// A failure of [`ResultsStore::store_stream`]: either the source stream (a download) or the
/// store failed. Kept apart so that the caller can ask the source's error whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E: std::error::Error + 'static> {
    #[error("reading the source failed")]
    Source(#[source] E),
    #[error(transparent)]
    Store(#[from] ResultsError),
}

/// Where a resource's result is stored, relative to the store's root. Built only from the
/// constructors below, whose id segments are escaped, so a payload's id can never name
/// another path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResultKey(String);

impl ResultKey {
    /// `batches/<id>/results.jsonl`; a `batches/` prefix on the id is dropped.
    pub fn batch_results(batch_id: &str) -> ResultKey {
        ResultKey(format!(
            "batches/{}/results.jsonl",
            segment(batch_id, "batches/")
        ))
    }

    /// `videos/<id>.mp4`.
    pub fn video(video_id: &str) -> ResultKey {
        ResultKey(format!("videos/{}.mp4", segment(video_id, "videos/")))
    }

    /// `interactions/<id>.json`; an `interactions/` prefix on the id is dropped.
    pub fn interaction(interaction_id: &str) -> ResultKey {
        ResultKey(format!(
            "interactions/{}.json",
            segment(interaction_id, "interactions/")
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ResultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The full address: `file:///…/batches/x/results.jsonl`, `s3://bucket/prefix/…`.
    pub location: String,
    pub size_bytes: u64,
    pub sha256_hex: String,
    /// Non-blank lines (JSONL records); a last line without a newline counts.
    pub lines: u64,
    /// Lines that are JSON objects with a top-level `error` key.
    pub error_lines: u64,
}

/// The results store.
#[derive(Debug, Clone)]
pub struct ResultsStore {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key: the path part of a results URL.
    prefix: Path,
    /// What `/{path}` is appended to for a location: `s3://bucket`, `file:///dir`; no trailing
    /// slash.
    root: String,
}

impl ResultsStore {
    /// `url` when given (`GEMHOOK_RESULTS_URL`), else the local directory `dir`.
    pub fn open(dir: &FsPath, url: Option<&str>) -> Result<ResultsStore, ResultsError> {
        match url.map(str::trim).filter(|url| !url.is_empty()) {
            Some(url) => ResultsStore::from_url(url),
            None => ResultsStore::local(dir),
        }
    }

    /// A local directory, created if missing.
    pub fn local(dir: &FsPath) -> Result<ResultsStore, ResultsError> {
        let directory = |source| ResultsError::Directory {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory)?;
        let dir = std::fs::canonicalize(dir).map_err(directory)?;
        let store = LocalFileSystem::new_with_prefix(&dir)?;
        let root = Url::from_directory_path(&dir)
            .map(|url| url.as_str().trim_end_matches('/').to_owned())
            .unwrap_or_else(|()| format!("file://{}", dir.display()));
        Ok(ResultsStore {
            store: Arc::new(store),
            prefix: Path::default(),
            root,
        })
    }

    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `file:///dir` or `memory://`.
    pub fn from_url(text: &str) -> Result<ResultsStore, ResultsError> {
        let url = Url::parse(text).map_err(ResultsError::InvalidUrl)?;
        let unsupported = || ResultsError::UnsupportedUrl {
            url: text.to_owned(),
        };
        let (scheme, path) = ObjectStoreScheme::parse(&url).map_err(|_| unsupported())?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let dir = url.to_file_path().map_err(|()| unsupported())?;
                return ResultsStore::local(&dir);
            }
            ObjectStoreScheme::Memory => return Ok(ResultsStore::in_memory()),
            // `from_env` reads AWS_* / GOOGLE_* variables; `with_url` picks bucket (and region
            // or endpoint where the URL says).
            ObjectStoreScheme::AmazonS3 => {
                Arc::new(AmazonS3Builder::from_env().with_url(url.as_str()).build()?)
            }
            ObjectStoreScheme::GoogleCloudStorage => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .build()?,
            ),
            _ => return Err(unsupported()),
        };
        Ok(ResultsStore {
            store,
            prefix: Path::parse(path)?,
            root: url[..url::Position::BeforePath].to_owned(),
        })
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> ResultsStore {
        ResultsStore {
            store: Arc::new(InMemory::new()),
            prefix: Path::default(),
            // `{root}/{path}` then reads `memory://videos/…`.
            root: "memory:/".to_owned(),
        }
    }

    /// The full address a key is (or would be) stored at.
    pub fn location(&self, key: &ResultKey) -> Result<String, ResultsError> {
        let path = self.path(key)?;
        Ok(format!("{}/{path}", self.root))
    }

    /// Streams `stream` to `key` in constant memory, publishing it only when complete.
    /// On any error the upload is aborted and `key` keeps whatever it held before.
    pub async fn store_stream<S, E>(
        &self,
        key: &ResultKey,
        stream: S,
    ) -> Result<StoredObject, StreamError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::error::Error + 'static,
    {
        let path = self.path(key)?;
        let location = self.location(key)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(ResultsError::from)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut summary = Summary::default();
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    abort(writer, &location).await;
                    return Err(StreamError::Source(source));
                }
            };
            // Waiting for a free slot before buffering more is what bounds memory when the
            // download is faster than the store.
            if let Err(err) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                abort(writer, &location).await;
                return Err(ResultsError::from(err).into());
            }
            summary.update(&chunk);
            writer.put(chunk);
        }
        writer.finish().await.map_err(ResultsError::from)?;
        Ok(summary.finish(location))
    }

    /// Stores a small body in one atomic put (an interaction's JSON).
    pub async fn store_bytes(
        &self,
        key: &ResultKey,
        bytes: Bytes,
    ) -> Result<StoredObject, ResultsError> {
        let path = self.path(key)?;
        let location = self.location(key)?;
        let mut summary = Summary::default();
        summary.update(&bytes);
        self.store.put(&path, PutPayload::from(bytes)).await?;
        Ok(summary.finish(location))
    }

    /// The whole object at `key`, or `None` if there is none. For tests and small objects.
    pub async fn get_bytes(&self, key: &ResultKey) -> Result<Option<Bytes>, ResultsError> {
        match self.store.get(&self.path(key)?).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// The size of the object at `key`, or `None` if there is none.
    pub async fn size_of(&self, key: &ResultKey) -> Result<Option<u64>, ResultsError> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    fn path(&self, key: &ResultKey) -> Result<Path, ResultsError> {
        let prefix = self.prefix.as_ref();
        let full = if prefix.is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{prefix}/{}", key.as_str())
        };
        Ok(Path::parse(full)?)
    }
}

async fn abort(writer: WriteMultipart, location: &str) {
    // The upload was never completed, so nothing is visible either way; a failed abort only
    // leaves a staging file or an incomplete multipart upload behind.
    if let Err(err) = writer.abort().await {
        tracing::warn!(location, error = %err, "aborting a results upload failed");
    }
}

/// Size, digest and line counts, updated chunk by chunk.
#[derive(Default)]
struct Summary {
    size_bytes: u64,
    sha256: Sha256,
    lines: JsonlCounter,
}

impl Summary {
    fn update(&mut self, chunk: &[u8]) {
        self.size_bytes += chunk.len() as u64;
        self.sha256.update(chunk);
        self.lines.feed(chunk);
    }

    fn finish(self, location: String) -> StoredObject {
        let (lines, error_lines) = self.lines.finish();
        StoredObject {
            location,
            size_bytes: self.size_bytes,
            sha256_hex: hex::encode(self.sha256.finalize()),
            lines,
            error_lines,
        }
    }
}

/// Counts JSONL records, and those with a top-level `error` key, in constant memory: a small
/// JSON scanner (nesting depth, string state, the key being read) instead of parsing each
/// line, because one line of a batch result can be many megabytes of inline media.
///
/// A line counts as an error line when its first non-blank byte opens an object, the object
/// closes with nothing but blanks after it, and a key at depth 1 is exactly `error`. Other
/// malformations are not detected (a scanner is not a validator); keys written with escapes
/// (`"\u0065rror"`) are not recognised.
#[derive(Debug, Default)]
pub struct JsonlCounter {
    lines: u64,
    error_lines: u64,
    line: LineScan,
}

#[derive(Debug, Default)]
struct LineScan {
    /// A non-blank byte was seen.
    started: bool,
    /// The line can no longer be an error line; skip to its end.
    settled: bool,
    /// The object opened on this line has closed.
    closed: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The next string at depth 1 is a key.
    expect_key: bool,
    /// The string being read is a depth-1 key; its first bytes are kept to compare.
    reading_key: bool,
    key: [u8; 5],
    key_len: usize,
    /// The key being read is not `error` (too long, or escaped).
    key_other: bool,
    /// The last depth-1 key read was `error`; confirmed by the `:` after it.
    key_is_error: bool,
    has_error_key: bool,
}

impl JsonlCounter {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.line.settled {
                // Nothing on the rest of this line can change its count: jump to its end.
                match bytes.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.end_line();
                        bytes = &bytes[end + 1..];
                    }
                    None => return,
                }
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            if byte == b'\n' {
                self.end_line();
            } else {
                self.line.scan(byte);
            }
        }
    }

    /// `(lines, error_lines)`, counting a last line without a newline.
    pub fn finish(mut self) -> (u64, u64) {
        self.end_line();
        (self.lines, self.error_lines)
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if line.started {
            self.lines += 1;
            // `closed` is cleared again by anything after the object, so it means "the whole
            // line is one object".
            if line.closed && line.has_error_key {
                self.error_lines += 1;
            }
        }
    }
}

impl LineScan {
    fn scan(&mut self, byte: u8) {
        // JSON forbids raw control characters in strings, so a `\n` always ends a record and
        // the caller handles it; here `\r` is just a blank.
        let blank = matches!(byte, b' ' | b'\t' | b'\r');
        if !self.started {
            if blank {
                return;
            }
            self.started = true;
            if byte == b'{' {
                self.depth = 1;
                self.expect_key = true;
            } else {
                self.settled = true;
            }
            return;
        }
        if self.closed {
            if !blank {
                // Something after the object: not a JSON object line.
                self.closed = false;
                self.settled = true;
            }
            return;
        }
        if self.in_string {
            self.scan_string(byte);
            return;
        }
        match byte {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.expect_key = false;
                    self.reading_key = true;
                    self.key_len = 0;
                    self.key_other = false;
                }
            }
            b':' if self.depth == 1 => {
                if self.key_is_error {
                    self.has_error_key = true;
                }
                self.key_is_error = false;
            }
            b',' if self.depth == 1 => self.expect_key = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.closed = true;
                }
            }
            _ => {}
        }
    }

    fn scan_string(&mut self, byte: u8) {
        if self.escaped {
            self.escaped = false;
            return;
        }
        match byte {
            b'\\' => {
                self.escaped = true;
                self.key_other = true;
            }
            b'"' => {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    self.key_is_error =
                        !self.key_other && self.key_len == 5 && &self.key == b"error";
                }
            }
            _ if self.reading_key => {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = byte;
                    self.key_len += 1;
                } else {
                    self.key_other = true;
                }
            }
            _ => {}
        }
    }
}

/// One key segment from an id: `[A-Za-z0-9_.-]` kept, every other byte as `%XX` (so distinct
/// ids stay distinct), a leading `.` escaped too (no `.`, `..` or hidden files), and ids longer
/// than [`MAX_SEGMENT_BYTES`] shortened to a prefix plus their SHA-256.
fn segment(id: &str, resource_prefix: &str) -> String {
    let id = id.trim();
    let id = id.strip_prefix(resource_prefix).unwrap_or(id);
    let mut out = String::with_capacity(id.len());
    for (i, byte) in id.bytes().enumerate() {
        let keep =
            byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-') || (byte == b'.' && i > 0);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.is_empty() {
        // An empty id still needs a distinct, valid segment.
        return "%00empty".to_owned();
    }
    if out.len() > MAX_SEGMENT_BYTES {
        let digest = hex::encode(Sha256::digest(id.as_bytes()));
        out.truncate(MAX_SEGMENT_BYTES - digest.len() - 1);
        // Never cut an escape in half.
        while out.len() >= 2 && out[out.len() - 2..].contains('%') {
            out.pop();
        }
        out.push('-');
        out.push_str(&digest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gemhook-results-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every file under `dir`, relative, sorted.
    fn files_under(dir: &FsPath) -> Vec<String> {
        fn walk(base: &FsPath, dir: &FsPath, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Bytes, io::Error>> {
        let owned: Vec<Result<Bytes, io::Error>> = parts
            .iter()
            .map(|part| Ok(Bytes::copy_from_slice(part)))
            .collect();
        futures::stream::iter(owned)
    }

    fn count(parts: &[&[u8]]) -> (u64, u64) {
        let mut counter = JsonlCounter::default();
        for part in parts {
            counter.feed(part);
        }
        counter.finish()
    }

    const JSONL: &[u8] = b"{\"key\":\"a\",\"response\":{\"error\":\"nested, not counted\"}}\n\
{\"key\":\"b\",\"error\":{\"code\":3,\"message\":\"bad\"}}\n\
\n\
{\"key\":\"c\",\"response\":{\"candidates\":[{\"text\":\"\\\"error\\\": no\"}]}}\r\n\
{\"error\":null}";

    #[test]
    fn lines_and_error_lines_are_counted_whatever_the_chunking() {
        let expected = (4, 2);
        assert_eq!(count(&[JSONL]), expected);
        for split in 1..JSONL.len() {
            let (a, b) = JSONL.split_at(split);
            assert_eq!(count(&[a, b]), expected, "split at {split}");
        }
        let bytewise: Vec<&[u8]> = JSONL.chunks(1).collect();
        assert_eq!(count(&bytewise), expected);
    }

    #[test]
    fn only_top_level_error_keys_of_whole_objects_count() {
        let cases: [(&[u8], (u64, u64)); 12] = [
            (b"", (0, 0)),
            (b"\n\n  \n", (0, 0)),
            (b"{\"error\":1}\n", (1, 1)),
            (b"{\"errors\":1}\n", (1, 0)),
            (b"{\"erro\":1}\n", (1, 0)),
            (b"{\"a\":{\"error\":1}}\n", (1, 0)),
            (b"{\"a\":[{\"error\":1}]}\n", (1, 0)),
            (b"{\"a\":\"error\"}\n", (1, 0)),
            (b"{\"a\":1} trailing\n", (1, 0)),
            (b"[{\"error\":1}]\n", (1, 0)),
            (b"\"error\"\n", (1, 0)),
            (
                b"{\"x\":\"}\",\"error\":{\"message\":\"a\\\"b\"}}\n",
                (1, 1),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                count(&[input]),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn result_keys_derive_from_the_resource_and_escape_hostile_ids() {
        assert_eq!(
            ResultKey::batch_results("batches/123").as_str(),
            "batches/123/results.jsonl"
        );
        assert_eq!(
            ResultKey::batch_results("batch_123").as_str(),
            "batches/batch_123/results.jsonl"
        );
        assert_eq!(ResultKey::video("vid-1").as_str(), "videos/vid-1.mp4");
        assert_eq!(
            ResultKey::interaction("interactions/v1_Chd.x").as_str(),
            "interactions/v1_Chd.x.json"
        );
        assert_eq!(
            ResultKey::batch_results("../../etc").as_str(),
            "batches/%2E.%2F..%2Fetc/results.jsonl"
        );
        assert_eq!(ResultKey::video("a#1 b").as_str(), "videos/a%231%20b.mp4");
        assert_ne!(ResultKey::video("a b"), ResultKey::video("a%20b"));
        let long = ResultKey::video(&"x".repeat(1000));
        assert!(long.as_str().len() < 160, "{long}");
        assert_ne!(long, ResultKey::video(&"x".repeat(999)));
        assert!(Path::parse(ResultKey::batch_results("").as_str()).is_ok());
    }

    #[tokio::test]
    async fn a_hostile_id_is_stored_inside_the_results_directory() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir.join("results")).unwrap();
        let key = ResultKey::batch_results("../../escape");

        store
            .store_bytes(&key, Bytes::from_static(b"{}"))
            .await
            .unwrap();

        assert_eq!(
            files_under(&dir),
            ["results/batches/%2E.%2F..%2Fescape/results.jsonl"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_chunked_stream_is_stored_with_exact_size_hash_and_counts() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir).unwrap();
        let key = ResultKey::batch_results("batches/42");
        let (a, rest) = JSONL.split_at(7);
        let (b, c) = rest.split_at(50);

        let stored = store.store_stream(&key, chunks(&[a, b, c])).await.unwrap();

        assert_eq!(stored.size_bytes, JSONL.len() as u64);
        assert_eq!(stored.sha256_hex, hex::encode(Sha256::digest(JSONL)));
        assert_eq!((stored.lines, stored.error_lines), (4, 2));
        let canonical = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            stored.location,
            format!("file://{}/batches/42/results.jsonl", canonical.display())
        );
        assert_eq!(
            std::fs::read(dir.join("batches/42/results.jsonl")).unwrap(),
            JSONL
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn storing_a_download_is_a_send_future_for_the_worker_to_spawn() {
        fn assert_send<T: Send>(_: &T) {}
        let store = ResultsStore::in_memory();
        let key = ResultKey::video("v");
        let download = futures::stream::empty::<Result<Bytes, crate::gemini::GeminiError>>();
        assert_send(&store.store_stream(&key, download));
    }

    #[tokio::test]
    async fn a_stream_larger_than_several_parts_round_trips() {
        let store = ResultsStore::in_memory();
        let key = ResultKey::batch_results("big");
        let line = b"{\"key\":\"k\",\"response\":{\"text\":\"0123456789abcdef\"}}\n";
        let body: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(line.len() * 400_000)
            .collect();
        let parts: Vec<&[u8]> = body.chunks(64 * 1024 + 3).collect();

        let stored = store.store_stream(&key, chunks(&parts)).await.unwrap();

        assert!(body.len() > 3 * PART_BYTES);
        assert_eq!(stored.size_bytes, body.len() as u64);
        assert_eq!(stored.lines, 400_000);
        assert_eq!(stored.error_lines, 0);
        assert_eq!(stored.sha256_hex, hex::encode(Sha256::digest(&body)));
        assert_eq!(store.get_bytes(&key).await.unwrap().unwrap(), body);
    }

    #[tokio::test]
    async fn a_stream_that_fails_halfway_leaves_nothing_at_the_key() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir).unwrap();
        let key = ResultKey::batch_results("b1");
        let big = vec![b'x'; PART_BYTES + 1];
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from(big)),
            Ok(Bytes::from_static(b"\n{\"key\":1}\n")),
            Err(io::Error::other("connection reset")),
        ]);

        let err = store.store_stream(&key, failing).await.unwrap_err();

        assert!(matches!(err, StreamError::Source(_)), "{err:?}");
        assert_eq!(store.get_bytes(&key).await.unwrap(), None);
        assert_eq!(store.size_of(&key).await.unwrap(), None);
        // The staging file is gone too, not merely hidden.
        assert_eq!(files_under(&dir), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_restore_keeps_the_previous_complete_object() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir).unwrap();
        let key = ResultKey::video("v1");
        store
            .store_stream(&key, chunks(&[b"complete"]))
            .await
            .unwrap();
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from(vec![0u8; PART_BYTES + 1])),
            Err(io::Error::other("cut off")),
        ]);

        assert!(store.store_stream(&key, failing).await.is_err());

        assert_eq!(
            store.get_bytes(&key).await.unwrap().as_deref(),
            Some(&b"complete"[..])
        );
        assert_eq!(files_under(&dir), ["videos/v1.mp4"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn nothing_is_visible_at_the_key_while_a_stream_is_in_progress() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir).unwrap();
        let key = ResultKey::batch_results("slow");
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, io::Error>>();
        let task = {
            let store = store.clone();
            let key = key.clone();
            tokio::spawn(async move { store.store_stream(&key, receiver).await })
        };
        // More than a part, so that bytes reach the disk before the stream ends.
        let first = vec![b'\n'; PART_BYTES * 2];
        sender.unbounded_send(Ok(Bytes::from(first))).unwrap();
        let staged = dir.join("batches/slow");
        let mut waited = 0;
        while !staged.exists() || files_under(&staged).is_empty() {
            assert!(waited < 200, "no staging file appeared");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }

        assert!(!dir.join("batches/slow/results.jsonl").exists());
        assert_eq!(store.size_of(&key).await.unwrap(), None);

        sender
            .unbounded_send(Ok(Bytes::from_static(b"{}")))
            .unwrap();
        drop(sender);
        let stored = task.await.unwrap().unwrap();
        assert_eq!(stored.size_bytes, (PART_BYTES * 2 + 2) as u64);
        assert_eq!(stored.lines, 1);
        assert_eq!(files_under(&dir), ["batches/slow/results.jsonl"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn storing_the_same_resource_twice_gives_one_identical_object() {
        let dir = temp_dir();
        let store = ResultsStore::local(&dir).unwrap();
        let key = ResultKey::interaction("v1_Chd1");
        let body = Bytes::from_static(b"{\"id\":\"v1_Chd1\",\"status\":\"completed\"}");

        let first = store.store_bytes(&key, body.clone()).await.unwrap();
        let second = store.store_bytes(&key, body.clone()).await.unwrap();

        assert_eq!(first, second);
        assert_eq!((first.lines, first.error_lines), (1, 0));
        assert_eq!(files_under(&dir), ["interactions/v1_Chd1.json"]);
        assert_eq!(store.get_bytes(&key).await.unwrap(), Some(body));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_choose_the_backend_and_keep_their_prefix() {
        let memory = ResultsStore::from_url("memory://").unwrap();
        assert_eq!(
            memory.location(&ResultKey::video("v")).unwrap(),
            "memory://videos/v.mp4"
        );
        let dir = temp_dir();
        let file_url = Url::from_directory_path(&dir).unwrap();
        let local = ResultsStore::open(&dir.join("unused"), Some(file_url.as_str())).unwrap();
        assert!(
            local
                .location(&ResultKey::video("v"))
                .unwrap()
                .ends_with("/videos/v.mp4")
        );
        assert!(!dir.join("unused").exists());
        let s3 = ResultsStore::from_url("s3://bucket/some/prefix").unwrap();
        assert_eq!(
            s3.location(&ResultKey::batch_results("b")).unwrap(),
            "s3://bucket/some/prefix/batches/b/results.jsonl"
        );
        assert!(matches!(
            ResultsStore::from_url("ftp://host/x"),
            Err(ResultsError::UnsupportedUrl { .. })
        ));
        assert!(matches!(
            ResultsStore::from_url("not a url"),
            Err(ResultsError::InvalidUrl(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
