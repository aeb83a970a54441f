//! What `bench ingest` writes down while it runs, for the fault campaign (`bench/faults`): the
//! `webhook-id` of every delivery answered 2xx, to be checked against the database afterwards,
//! and one line per request (when it was sent, how long its answer took, what it was).
//!
//! A thread of its own writes both files, so the senders never wait on the disk. It flushes at
//! least every few milliseconds: the files are current while the load runs, and if the load
//! generator itself dies only the last moments are missing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Answer, BenchError};

/// How stale the files may be while answers keep arriving.
const FLUSH_EVERY: Duration = Duration::from_millis(5);

/// One request's fate.
pub(super) struct Record {
    /// When the request was started, in milliseconds since the Unix epoch: the same clock a
    /// script uses (`date +%s%3N`) to note when it injected and ended a fault.
    pub sent_unix_ms: u64,
    /// From sending the request to its answer (or to giving up), in microseconds.
    pub elapsed_us: u64,
    pub answer: Answer,
    pub webhook_id: String,
}

/// Where to write: either file may be absent.
#[derive(Debug, Clone, Default)]
pub struct RecordFiles {
    /// Every `webhook-id` answered 2xx, one per line.
    pub acked_ids: Option<PathBuf>,
    /// One line per request: `sent_unix_ms elapsed_us answer webhook_id`.
    pub answer_log: Option<PathBuf>,
}

impl RecordFiles {
    pub fn any(&self) -> bool {
        self.acked_ids.is_some() || self.answer_log.is_some()
    }
}

/// The writing thread; [`Recorder::finish`] waits for everything sent to be on disk.
pub(super) struct Recorder {
    thread: tokio::task::JoinHandle<Result<(), BenchError>>,
}

/// A file being written, with its name for error messages.
struct Output {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl Output {
    fn create(path: &Path) -> Result<Output, BenchError> {
        let file = File::create(path).map_err(|source| BenchError::Create {
            path: path.to_owned(),
            source,
        })?;
        Ok(Output {
            path: path.to_owned(),
            writer: BufWriter::new(file),
        })
    }

    fn write(&mut self, line: std::fmt::Arguments<'_>) -> Result<(), BenchError> {
        writeln!(self.writer, "{line}").map_err(|source| self.failed(source))
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        self.writer.flush().map_err(|source| self.failed(source))
    }

    fn failed(&self, source: std::io::Error) -> BenchError {
        BenchError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

impl Recorder {
    /// Creates the files (failing before any request is sent if one cannot be) and starts the
    /// thread. It ends when every sender of the returned channel has been dropped.
    pub fn start(files: &RecordFiles) -> Result<(mpsc::Sender<Record>, Recorder), BenchError> {
        let mut acked = files.acked_ids.as_deref().map(Output::create).transpose()?;
        let mut log = files
            .answer_log
            .as_deref()
            .map(Output::create)
            .transpose()?;
        let (sender, receiver) = mpsc::channel::<Record>();
        let thread = tokio::task::spawn_blocking(move || {
            let mut last_flush = Instant::now();
            loop {
                let record = match receiver.recv_timeout(FLUSH_EVERY) {
                    Ok(record) => Some(record),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let idle = record.is_none();
                if let Some(record) = record {
                    if record.answer.is_ack() {
                        if let Some(acked) = &mut acked {
                            acked.write(format_args!("{}", record.webhook_id))?;
                        }
                    }
                    if let Some(log) = &mut log {
                        log.write(format_args!(
                            "{} {} {} {}",
                            record.sent_unix_ms,
                            record.elapsed_us,
                            record.answer,
                            record.webhook_id
                        ))?;
                    }
                }
                if idle || last_flush.elapsed() >= FLUSH_EVERY {
                    for output in [&mut acked, &mut log].into_iter().flatten() {
                        output.flush()?;
                    }
                    last_flush = Instant::now();
                }
            }
            for output in [&mut acked, &mut log].into_iter().flatten() {
                output.flush()?;
            }
            Ok(())
        });
        Ok((sender, Recorder { thread }))
    }

    /// Waits until everything recorded is written and flushed.
    pub async fn finish(self) -> Result<(), BenchError> {
        self.thread
            .await
            .map_err(|_| BenchError::RecorderPanicked)?
    }
}
