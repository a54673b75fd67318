//! File transfer over the relay's HTTP API (PROTOCOL.md §11): streamed, resumable uploads
//! (`HEAD` for the offset, `PUT` or `PATCH` with `Upload-Offset`) and streamed, resumable
//! downloads (`GET` with `Range`), with SHA-256 checks and progress callbacks.
//!
//! Files are never loaded into memory: bodies are read from and written to disk in 1 MiB units
//! on blocking threads (`file_io`), and downloads are hashed as they are written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{header, Method, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

mod direct_write;
mod download;
mod file_io;
mod receive;
mod relay_http;
mod source_hash;

use crate::backoff::Backoff;
use crate::error::ClientError;
use file_io::PartFile;
use msim_shared::relay_http::{MSIM_COMPLETE, MSIM_SHA256, MSIM_SHA256_SKIP, UPLOAD_OFFSET};
use msim_shared::tls::rustls::ClientConfig;
use receive::{receive_held, receive_streamed};
use relay_http::{empty, error_status, header_text, header_u64, request, send, target, Target};
use source_hash::SourceHash;

pub use download::{download, download_deferred, download_pausable, part_path};

/// Progress callback: `(bytes done, bytes total)`. Called from the transfer's tasks.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Error bodies are read up to this many bytes.
const MAX_ERROR_BODY: usize = 4096;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Where and how to reach one transfer on a relay: the URL and the bearer token from
/// `SEND-FILE-PROXY-OK` (upload) or `SEND-FILE-PROXY-READY` (download).
#[derive(Debug, Clone)]
pub struct Transfer {
    /// `http://host:port/v1/transfers/ID`.
    pub url: String,
    /// The capability token.
    pub token: String,
    /// The declared size. Exact for a download (0 is an empty file: a relay sending more is
    /// refused); for an upload, 0 means "the source's length" (an upload grant has no size).
    pub size: u64,
}

impl From<&msim_shared::proto::UploadGrant> for Transfer {
    fn from(g: &msim_shared::proto::UploadGrant) -> Self {
        Transfer {
            url: grant_url(&g.url, &g.connect, g.port, &g.transfer_id),
            token: g.token.clone(),
            size: 0,
        }
    }
}

impl From<&msim_shared::proto::DownloadGrant> for Transfer {
    fn from(g: &msim_shared::proto::DownloadGrant) -> Self {
        Transfer {
            url: grant_url(&g.url, &g.connect, g.port, &g.transfer_id),
            token: g.token.clone(),
            size: g.size,
        }
    }
}

fn grant_url(url: &str, connect: &str, port: u16, id: &str) -> String {
    if url.is_empty() {
        format!("http://{connect}:{port}/v1/transfers/{id}")
    } else {
        url.to_owned()
    }
}

/// Retry policy for interrupted transfers.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Attempts (first try included) before giving up.
    pub attempts: u32,
    /// Nominal delay before the first retry; doubles each time up to 30 s, and each wait is
    /// drawn from the upper half of the nominal delay ([`Backoff`]'s jitter).
    pub retry_delay: Duration,
    /// Timeout for connecting and for each response's headers.
    pub timeout: Duration,
    /// Trust for `https://` relays (None: the bundled public roots). Build it with
    /// `msim_shared::tls::client_config`; certificates are always verified.
    pub tls: Option<Arc<ClientConfig>>,
    /// How long [`download_deferred`] waits, once the file is downloaded, for the sender's
    /// SHA-256 (`SEND-FILE-PROXY-HASH`, normally there within milliseconds of the last byte).
    pub sender_hash_wait: Duration,
}

/// The longest wait between two attempts of a transfer.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

impl TransferOptions {
    /// The wait schedule between attempts.
    fn backoff(&self) -> Backoff {
        Backoff::new(self.retry_delay, MAX_RETRY_DELAY)
    }
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            attempts: 6,
            retry_delay: Duration::from_millis(250),
            timeout: Duration::from_secs(60),
            tls: None,
            sender_hash_wait: Duration::from_secs(10),
        }
    }
}

/// What a completed upload reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// Bytes stored by the relay.
    pub size: u64,
    /// The relay's SHA-256 of the stored file, when it said.
    pub sha256: Option<String>,
    /// Whether the upload continued an earlier, interrupted one.
    pub resumed: bool,
    /// The SHA-256 of the bytes read from the file for the upload ([`upload_hashing`] only).
    pub source_sha256: Option<String>,
}

/// What a completed download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256 (lowercase hex).
    pub sha256: String,
    /// Whether the SHA-256 was checked against one received over the chat connection (the
    /// offer's, or for [`download_deferred`] the sender's declaration; false when the sender
    /// declared none in time). The relay's `Msim-Sha256` alone never makes a file verified.
    pub verified: bool,
    /// Whether the download continued an earlier, interrupted one.
    pub resumed: bool,
}

/// Lowercase hex SHA-256 of a file, streamed (on a blocking thread, in 1 MiB reads).
pub async fn sha256_file(path: &Path) -> Result<String, ClientError> {
    let path = path.to_owned();
    file_io::blocking(move || file_io::sha256_file_blocking(&path)).await
}

/// A small file read whole and hashed in one pass: what [`upload_bytes`] sends, so the
/// upload is exactly the bytes the offer's SHA-256 was computed from.
#[derive(Debug, Clone)]
pub struct HeldFile {
    /// The file's bytes.
    pub bytes: Bytes,
    /// Their SHA-256 (lowercase hex).
    pub sha256: String,
}

/// Reads a file of at most `max` bytes into memory and hashes it, on a blocking thread;
/// `None` when the file is larger.
pub async fn read_held(path: &Path, max: usize) -> Result<Option<HeldFile>, ClientError> {
    let path = path.to_owned();
    file_io::blocking(move || file_io::read_held_blocking(&path, max)).await
}

/// Whether an error is worth retrying (the connection broke, or the relay is busy).
fn transient(error: &ClientError) -> bool {
    match error {
        ClientError::Http(_) | ClientError::Io(_) => true,
        // A broken handshake may be retried; a refused certificate stays refused.
        ClientError::Tls { certificate, .. } => !certificate,
        ClientError::RelayStatus { status, .. } => {
            *status >= 500 || *status == 409 || *status == 429 || *status == 408
        }
        _ => false,
    }
}

/// Uploads `path` (exactly `size` bytes, checked against the file) to a transfer, resuming
/// where the relay stopped if an earlier attempt was interrupted.
pub async fn upload(
    transfer: &Transfer,
    path: &Path,
    progress: Option<Progress>,
    options: &TransferOptions,
) -> Result<UploadReport, ClientError> {
    upload_with(transfer, Source::File(path), progress, options, None).await
}

/// [`upload`] from memory: a file read with [`read_held`] is sent without reading it again
/// (and without a file thread), and an interrupted upload resumes from the same bytes.
pub async fn upload_bytes(
    transfer: &Transfer,
    bytes: Bytes,
    progress: Option<Progress>,
    options: &TransferOptions,
) -> Result<UploadReport, ClientError> {
    upload_with(transfer, Source::Memory(&bytes), progress, options, None).await
}

/// Where an upload's bytes come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a Path),
    Memory(&'a Bytes),
}

/// [`upload`], hashing the file from the bytes it reads for the upload (one pass over the
/// file): [`UploadReport::source_sha256`] is the SHA-256 to declare for an offer made without
/// one (PROTOCOL.md §10.7). The relay is asked not to hash it (`Msim-Sha256: skip`, §11.3):
/// the recipient checks its download against the declared hash, so [`UploadReport::sha256`]
/// is `None` unless a relay that ignores the request reports one anyway.
pub async fn upload_hashing(
    transfer: &Transfer,
    path: &Path,
    progress: Option<Progress>,
    options: &TransferOptions,
) -> Result<UploadReport, ClientError> {
    let hash = SourceHash::default();
    let source = Source::File(path);
    let mut report = upload_with(transfer, source, progress, options, Some(hash.clone())).await?;
    let (path, size) = (path.to_owned(), report.size);
    report.source_sha256 = Some(file_io::blocking(move || hash.finish(&path, size)).await?);
    Ok(report)
}

/// `DELETE`: cancels a transfer on the relay and frees its storage (§11.6). A transfer that
/// is already gone (`404`, `410`) counts as cancelled.
pub async fn cancel(transfer: &Transfer, options: &TransferOptions) -> Result<(), ClientError> {
    let target = target(&transfer.url)?;
    let req = request(Method::DELETE, &target, &transfer.token)
        .body(empty())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = send(&target, req, options).await?;
    match response.status() {
        s if s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::GONE => Ok(()),
        _ => Err(error_status(response).await),
    }
}

async fn upload_with(
    transfer: &Transfer,
    source: Source<'_>,
    progress: Option<Progress>,
    options: &TransferOptions,
    hash: Option<SourceHash>,
) -> Result<UploadReport, ClientError> {
    let target = target(&transfer.url)?;
    let size = match source {
        Source::File(path) => tokio::fs::metadata(path).await?.len(),
        Source::Memory(bytes) => bytes.len() as u64,
    };
    if transfer.size != 0 && transfer.size != size {
        return Err(ClientError::SizeMismatch {
            expected: transfer.size,
            actual: size,
        });
    }
    let mut backoff = options.backoff();
    let mut attempt = 0;
    let mut resumed = false;
    // The first attempt skips HEAD: a new transfer has nothing stored yet.
    let mut known_offset = Some(0u64);
    loop {
        attempt += 1;
        let result = async {
            let offset = match known_offset.take() {
                Some(offset) => offset,
                None => match upload_offset(&target, &transfer.token, options).await? {
                    Offset::Complete(sha) => {
                        return Ok(Step::Done(UploadReport {
                            size,
                            sha256: sha,
                            resumed: true,
                            source_sha256: None,
                        }))
                    }
                    Offset::At(n) => n,
                },
            };
            if offset > 0 {
                resumed = true;
            }
            // A file that changed size since it was offered is not retried (the first
            // attempt has just read its size).
            let now = match (attempt, source) {
                (1, _) | (_, Source::Memory(_)) => size,
                (_, Source::File(path)) => tokio::fs::metadata(path).await?.len(),
            };
            if now != size {
                return Err(ClientError::SizeMismatch {
                    expected: size,
                    actual: now,
                });
            }
            let hash = hash.clone();
            upload_from(
                &target, transfer, source, size, offset, &progress, options, hash,
            )
            .await
        }
        .await;
        match result {
            Ok(Step::Done(mut report)) => {
                report.resumed |= resumed;
                return Ok(report);
            }
            Ok(Step::ResumeAt(offset)) => {
                // The relay told us where to go on: no need to ask.
                known_offset = Some(offset);
                if attempt >= options.attempts {
                    return Err(ClientError::Http(format!(
                        "upload did not complete after {attempt} attempts"
                    )));
                }
            }
            Err(error) if transient(&error) && attempt < options.attempts => {
                tracing::info!(%error, attempt, "upload interrupted; resuming");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    }
}

enum Offset {
    At(u64),
    Complete(Option<String>),
}

enum Step {
    Done(UploadReport),
    ResumeAt(u64),
}

async fn upload_offset(
    target: &Target,
    token: &str,
    options: &TransferOptions,
) -> Result<Offset, ClientError> {
    let req = request(Method::HEAD, target, token)
        .body(empty())
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let response = send(target, req, options).await?;
    match response.status() {
        StatusCode::NOT_FOUND => Ok(Offset::At(0)),
        s if s.is_success() => {
            if header_text(&response, MSIM_COMPLETE).as_deref() == Some("true") {
                return Ok(Offset::Complete(header_text(&response, MSIM_SHA256)));
            }
            Ok(Offset::At(
                header_u64(&response, UPLOAD_OFFSET).unwrap_or(0),
            ))
        }
        _ => Err(error_status(response).await),
    }
}

#[allow(clippy::too_many_arguments)]
async fn upload_from(
    target: &Target,
    transfer: &Transfer,
    source: Source<'_>,
    size: u64,
    offset: u64,
    progress: &Option<Progress>,
    options: &TransferOptions,
    hash: Option<SourceHash>,
) -> Result<Step, ClientError> {
    let len = size - offset.min(size);
    let skip_relay_hash = hash.is_some();
    let mut done = offset;
    if let Some(p) = progress {
        p(done, size);
    }
    let progress_cb = progress.clone();
    let units: futures::stream::BoxStream<'static, std::io::Result<Bytes>> = match source {
        Source::File(path) => {
            let mut units = file_io::read_units(path.to_owned(), offset, len, hash);
            futures::stream::poll_fn(move |cx| units.poll_recv(cx)).boxed()
        }
        Source::Memory(bytes) => {
            let rest = (len > 0).then(|| Ok(bytes.slice(offset as usize..)));
            futures::stream::iter(rest).boxed()
        }
    };
    let stream = units.map(move |chunk| {
        chunk.map(|data| {
            done += data.len() as u64;
            if let Some(p) = &progress_cb {
                p(done, size);
            }
            Frame::data(data)
        })
    });
    let body = StreamBody::new(stream).boxed_unsync();
    let method = if offset == 0 {
        Method::PUT
    } else {
        Method::PATCH
    };
    let mut builder = request(method, target, &transfer.token)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if offset > 0 {
        builder = builder.header(UPLOAD_OFFSET, offset);
    }
    if skip_relay_hash {
        // The sender hashes what it sends and declares it (§10.7): the relay's SHA-256 would
        // check nothing the recipient does not.
        builder = builder.header(MSIM_SHA256, MSIM_SHA256_SKIP);
    }
    let req = builder
        .body(body)
        .map_err(|e| ClientError::Http(e.to_string()))?;
    crate::timing::mark("upload-request");
    let response = send(target, req, options).await?;
    crate::timing::mark("upload-answered");
    let status = response.status();
    let relay_offset = header_u64(&response, UPLOAD_OFFSET);
    match status {
        StatusCode::OK | StatusCode::CREATED => Ok(Step::Done(UploadReport {
            size,
            sha256: header_text(&response, MSIM_SHA256),
            resumed: offset > 0,
            source_sha256: None,
        })),
        // Stored part of it (the relay wants more).
        StatusCode::NO_CONTENT => match relay_offset {
            Some(n) if n > offset && n < size => Ok(Step::ResumeAt(n)),
            Some(n) if n >= size => Ok(Step::Done(UploadReport {
                size,
                sha256: None,
                resumed: offset > 0,
                source_sha256: None,
            })),
            _ => Err(ClientError::Http("upload made no progress".into())),
        },
        // The relay has a different offset (an earlier attempt got further, or less far).
        StatusCode::CONFLICT if relay_offset.is_some_and(|n| n != offset && n <= size) => {
            Ok(Step::ResumeAt(relay_offset.unwrap_or(0)))
        }
        _ => Err(error_status(response).await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = target("http://127.0.0.1:3215/v1/transfers/abc").expect("valid");
        assert_eq!(t.authority, "127.0.0.1:3215");
        assert_eq!(t.uri.path(), "/v1/transfers/abc");
        let t = target("http://relay.example/v1/transfers/abc").expect("valid");
        assert_eq!(t.authority, "relay.example:80");
        let t = target("https://relay.example/x").expect("valid");
        assert_eq!(t.authority, "relay.example:443");
        assert!(t.https);
        assert_eq!(t.host, "relay.example");
        let t = target("https://[::1]:8443/x").expect("valid");
        assert_eq!(t.authority, "[::1]:8443");
        assert_eq!(t.host, "::1");
        assert!(target("ftp://relay.example/x").is_err());
        assert!(target("not a url").is_err());
    }

    #[test]
    fn part_paths() {
        assert_eq!(
            part_path(Path::new("/tmp/cat.jpg")),
            PathBuf::from("/tmp/cat.jpg.part")
        );
    }

    #[test]
    fn grant_url_falls_back_to_connect_and_port() {
        assert_eq!(
            grant_url("", "10.0.0.1", 3215, "T"),
            "http://10.0.0.1:3215/v1/transfers/T"
        );
        assert_eq!(grant_url("http://x/y", "h", 1, "T"), "http://x/y");
    }
}
