//! Receiving a download's body into its part file: small bodies are held in memory until the
//! download is finished, larger ones go to a writer thread in batches of about one unit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::download::paused;
use super::file_io::{self, PartFile};
use super::Progress;
use crate::error::ClientError;

/// Progress is reported as bytes arrive, not per write batch (a slow sender's batch of one
/// unit can take minutes, and a caller giving up downloads without progress must see its
/// bytes flow): after this many new bytes ...
const REPORT_EVERY_BYTES: u64 = 64 << 10;
/// ... or after this long with any new bytes.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Calls the progress callback with the bytes received, at most every
/// [`REPORT_EVERY_BYTES`] or [`REPORT_EVERY`], and at the last byte.
struct Reporter<'a> {
    progress: Option<&'a Progress>,
    total: u64,
    reported: u64,
    at: Instant,
}

impl<'a> Reporter<'a> {
    fn new(progress: Option<&'a Progress>, total: u64, done: u64) -> Self {
        Reporter {
            progress,
            total,
            reported: done,
            at: Instant::now(),
        }
    }

    fn arrived(&mut self, done: u64) {
        let Some(p) = self.progress else { return };
        let new = done.saturating_sub(self.reported);
        // The last byte is reported at once: a caller learns that only the end (the hash,
        // the rename) is left.
        let last = new > 0 && done >= self.total;
        if last || new >= REPORT_EVERY_BYTES || (new > 0 && self.at.elapsed() >= REPORT_EVERY) {
            p(done, self.total);
            self.reported = done;
            self.at = Instant::now();
        }
    }

    /// No frame came for [`REPORT_EVERY`]: report what arrived since the last report, so a
    /// sender that stalls mid-way shows all its bytes, not all but the last few KiB.
    fn quiet(&mut self, done: u64) {
        let Some(p) = self.progress else { return };
        if done > self.reported {
            p(done, self.total);
            self.reported = done;
            self.at = Instant::now();
        }
    }
}

/// Refuses a frame of `n` bytes that would take the download past the declared `size`.
fn check_room(size: u64, done: u64, n: usize) -> Result<(), ClientError> {
    if done + n as u64 > size {
        return Err(ClientError::SizeMismatch {
            expected: size,
            actual: done + n as u64,
        });
    }
    Ok(())
}

/// The next data of `body` (`None` at its end), or [`ClientError::Paused`] once `pause` is
/// cancelled (checked first, so a fast body cannot keep a pause waiting). While no frame
/// comes, `reporter` reports the `done` bytes it has not reported yet.
async fn next_data(
    body: &mut hyper::body::Incoming,
    pause: Option<&CancellationToken>,
    reporter: &mut Reporter<'_>,
    done: u64,
) -> Result<Option<Bytes>, ClientError> {
    loop {
        let frame = tokio::select! {
            biased;
            () = paused(pause) => return Err(ClientError::Paused),
            f = body.frame() => f,
            () = tokio::time::sleep(REPORT_EVERY) => {
                reporter.quiet(done);
                continue;
            }
        };
        let Some(frame) = frame else {
            return Ok(None);
        };
        let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// Receives a small body (at most one unit, by its `Content-Length`) into memory; the part file
/// comes back with whatever arrived, and how receiving ended.
pub(super) async fn receive_held(
    mut part: PartFile,
    mut body: hyper::body::Incoming,
    size: u64,
    done: &mut u64,
    progress: &Option<Progress>,
    total: u64,
    pause: Option<&CancellationToken>,
) -> (PartFile, Result<(), ClientError>) {
    let mut held = 0usize;
    let mut reporter = Reporter::new(progress.as_ref(), total, *done);
    let received = async {
        while let Some(data) = next_data(&mut body, pause, &mut reporter, *done).await? {
            check_room(size, *done, data.len())?;
            held += data.len();
            if held > file_io::IO_UNIT {
                return Err(ClientError::Http(
                    "body longer than its Content-Length".into(),
                ));
            }
            *done += data.len() as u64;
            part.hold(data);
            reporter.arrived(*done);
        }
        Ok(())
    }
    .await;
    (part, received)
}

/// Receives a body through a writer thread, in batches of about one unit (the frames are
/// handed over without copying). `Err` when the writer failed (the part file is then not in
/// step with its hash); otherwise the part file and how receiving ended. The part file comes
/// back only once the writer has written everything received and stopped, also when
/// `pause` ends the receiving early.
pub(super) async fn receive_streamed(
    part: PartFile,
    mut body: hyper::body::Incoming,
    size: u64,
    done: &mut u64,
    progress: &Option<Progress>,
    total: u64,
    pause: Option<&CancellationToken>,
) -> Result<(PartFile, Result<(), ClientError>), (Option<PartFile>, ClientError)> {
    let (writer, written) = part.writer();
    let mut batch = Vec::new();
    let mut batched = 0usize;
    let mut reporter = Reporter::new(progress.as_ref(), total, *done);
    let received: Result<(), ClientError> = async {
        while let Some(data) = next_data(&mut body, pause, &mut reporter, *done).await? {
            check_room(size, *done, data.len())?;
            *done += data.len() as u64;
            batched += data.len();
            batch.push(data);
            if batched >= file_io::IO_UNIT {
                batched = 0;
                if writer.send(std::mem::take(&mut batch)).await.is_err() {
                    // The writer stopped on an error; its handle says which.
                    break;
                }
            }
            reporter.arrived(*done);
        }
        Ok(())
    }
    .await;
    // Keep what arrived for the next attempt.
    if !batch.is_empty() {
        let _ = writer.send(batch).await;
    }
    drop(writer);
    match written.await {
        Ok(Ok(part)) => {
            if let Some(p) = progress {
                p(part.len(), total);
            }
            Ok((part, received))
        }
        Ok(Err(e)) => Err((None, e.into())),
        Err(e) => Err((None, ClientError::Io(std::io::Error::other(e.to_string())))),
    }
}
