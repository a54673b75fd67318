//! Streamed, resumable downloads (`GET` with `Range`) into `<dest>.part`, hashed as written,
//! renamed to `dest` only when complete and verified (PROTOCOL.md §11.5, §10.7).

use super::*;
use tokio_util::sync::CancellationToken;

/// Downloads a transfer to `dest`, streaming (the relay may still be receiving the upload).
///
/// Bytes go to `dest` + `.part` first; an existing `.part` file is continued with `Range`
/// (pick a `dest` of this transfer's own: a `.part` is taken as its bytes; one already of the
/// full size is fetched again, never taken as complete without a request).
/// The result is renamed to `dest` only when complete and matching `expected_sha256` (without
/// it: the relay's `Msim-Sha256` header, if any). [`DownloadReport::verified`] is true only
/// with `expected_sha256`, a hash that came over the chat connection: the relay's own header
/// shows only that the download matches what the relay stored (PROTOCOL.md §11.5).
pub async fn download(
    transfer: &Transfer,
    dest: &Path,
    expected_sha256: Option<&str>,
    progress: Option<Progress>,
    options: &TransferOptions,
) -> Result<DownloadReport, ClientError> {
    let expect = Expect::Known(expected_sha256);
    download_with(transfer, dest, expect, progress, options, None).await
}

/// [`download`] of a file offered without a SHA-256 (PROTOCOL.md §10.7): hashed as it is
/// received, then checked against the sender's SHA-256 from `sender_hash` (waiting up to
/// [`TransferOptions::sender_hash_wait`] for it once the last byte is in). A mismatch is
/// [`ClientError::ChecksumMismatch`] and keeps nothing; no hash in time keeps the file with
/// [`DownloadReport::verified`] false (checked only against the relay's `Msim-Sha256`).
pub async fn download_deferred(
    transfer: &Transfer,
    dest: &Path,
    sender_hash: &crate::HashWatch,
    progress: Option<Progress>,
    options: &TransferOptions,
) -> Result<DownloadReport, ClientError> {
    let expect = Expect::Deferred(sender_hash);
    download_with(transfer, dest, expect, progress, options, None).await
}

/// [`download`] (or [`download_deferred`] when `expected_sha256` is `None` and there is a
/// `sender_hash`) that stops when `pause` is cancelled while the body is being received or
/// awaited: the bytes received so far are written to the `.part` file and the writer has
/// handed it back before this returns [`ClientError::Paused`], so a later call continues the
/// file as it is on disk. A pause once the last byte is in changes nothing (the download is
/// finished and checked). Cancel `pause` rather than dropping the future: a dropped download
/// may still be writing its `.part` for a moment.
pub async fn download_pausable(
    transfer: &Transfer,
    dest: &Path,
    expected_sha256: Option<&str>,
    sender_hash: Option<&crate::HashWatch>,
    progress: Option<Progress>,
    options: &TransferOptions,
    pause: &CancellationToken,
) -> Result<DownloadReport, ClientError> {
    let expect = match (expected_sha256, sender_hash) {
        (None, Some(watch)) => Expect::Deferred(watch),
        (sha, _) => Expect::Known(sha),
    };
    download_with(transfer, dest, expect, progress, options, Some(pause)).await
}

/// Completes when `pause` is cancelled; never without one.
pub(super) async fn paused(pause: Option<&CancellationToken>) {
    match pause {
        Some(p) => p.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Where a download's expected SHA-256 comes from.
enum Expect<'a> {
    /// Announced with the grant (or not at all: then the relay's `Msim-Sha256` catches a
    /// damaged download, but the file is not verified).
    Known(Option<&'a str>),
    /// Declared by the sender after its upload.
    Deferred(&'a crate::HashWatch),
}

async fn download_with(
    transfer: &Transfer,
    dest: &Path,
    expect: Expect<'_>,
    progress: Option<Progress>,
    options: &TransferOptions,
    pause: Option<&CancellationToken>,
) -> Result<DownloadReport, ClientError> {
    let target = target(&transfer.url)?;
    let part_name = part_path(dest);
    let mut backoff = options.backoff();
    let mut attempt = 0;
    // Hashes what the .part file already holds, once; from here on the hash follows each write.
    let mut part = Some(PartFile::open(&part_name).await?);
    let mut resumed = false;
    let mut relay_sha = None;
    loop {
        attempt += 1;
        let current = match part.take() {
            Some(p) => p,
            // A write failed in the last attempt: what is on disk is the truth.
            None => PartFile::open(&part_name).await?,
        };
        resumed |= current.len() > 0;
        let before = current.len();
        let result = download_from(
            &target,
            transfer,
            current,
            &progress,
            options,
            &mut relay_sha,
            pause,
        )
        .await;
        match result {
            Ok(done) => {
                part = Some(done);
                break;
            }
            Err((kept, error))
                if download_transient(&error)
                    && (attempt < options.attempts || progressed(&kept, before)) =>
            {
                if progressed(&kept, before) {
                    // Cut after progress (e.g. the relay cut a download that waited long for
                    // a stalled upload, §11.5): a fresh round of attempts.
                    attempt = 0;
                    backoff = options.backoff();
                }
                part = kept;
                tracing::info!(%error, attempt, "download interrupted; resuming");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    // Nothing is being written between attempts.
                    () = paused(pause) => return Err(ClientError::Paused),
                }
            }
            Err((kept, error)) => {
                // An empty .part is kept when the download may still succeed later (paused, or
                // out of attempts on a busy, restarting or not yet uploaded relay): it marks
                // the download as begun, so that `msim receive` continues its grant at the next
                // login. After a final refusal (gone, forbidden, a wrong file) it goes; what a
                // small download held in memory goes with it.
                drop(kept);
                if matches!(error, ClientError::Paused) || download_transient(&error) {
                    return Err(error);
                }
                if let Ok(meta) = tokio::fs::metadata(&part_name).await {
                    if meta.len() == 0 {
                        let _ = tokio::fs::remove_file(&part_name).await;
                    }
                }
                return Err(error);
            }
        }
    }
    let Some(part) = part else {
        return Err(ClientError::Http("download lost its file".into()));
    };
    let relay_sha = relay_sha.map(|s: String| s.to_ascii_lowercase());
    let (expected, verified) = match expect {
        Expect::Known(sha) => {
            // Verified only against a hash from the chat connection: the relay's word alone
            // (over http:// anyone on the path may rewrite body and header) is no proof.
            let verified = sha.is_some();
            (sha.map(str::to_ascii_lowercase).or(relay_sha), verified)
        }
        Expect::Deferred(watch) => {
            match tokio::time::timeout(options.sender_hash_wait, watch.sha256()).await {
                Ok(Ok(sha)) => (Some(sha), true),
                // No word from the sender: the relay's hash still catches a damaged download.
                _ => (relay_sha, false),
            }
        }
    };
    crate::timing::mark("download-hash-known");
    // Keeps nothing that does not match.
    let (size, sha256) = part
        .finish_into(dest.to_owned(), transfer.size, expected)
        .await?;
    crate::timing::mark("download-synced-renamed");
    Ok(DownloadReport {
        path: dest.to_owned(),
        size,
        sha256,
        verified,
        resumed,
    })
}

/// Whether an attempt that began with `before` bytes left more in the part file.
fn progressed(kept: &Option<PartFile>, before: u64) -> bool {
    kept.as_ref().is_some_and(|p| p.len() > before)
}

fn download_transient(error: &ClientError) -> bool {
    // 404: the upload has not started yet (the relay waits a while, then says so).
    transient(error) || matches!(error, ClientError::RelayStatus { status: 404, .. })
}

/// `dest` with `.part` appended to the file name.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// One download attempt into `part`. On failure the part file comes back when it is still in
/// step with its hash (then the next attempt resumes from it without reading it again).
async fn download_from(
    target: &Target,
    transfer: &Transfer,
    mut part: PartFile,
    progress: &Option<Progress>,
    options: &TransferOptions,
    relay_sha: &mut Option<String>,
    pause: Option<&CancellationToken>,
) -> Result<PartFile, (Option<PartFile>, ClientError)> {
    if part.len() >= transfer.size {
        // Already "complete" before asking: never taken as this transfer's file without a
        // request (it may be another transfer's leftover): fetched again, whole.
        part = match part.restart().await {
            Ok(p) => p,
            Err(e) => return Err((None, e)),
        };
    }
    let have = part.len();
    let mut builder = request(Method::GET, target, &transfer.token);
    if have > 0 {
        builder = builder.header(header::RANGE, format!("bytes={have}-"));
    }
    let req = match builder.body(empty()) {
        Ok(req) => req,
        Err(e) => return Err((Some(part), ClientError::Http(e.to_string()))),
    };
    crate::timing::mark("download-request");
    let sent = tokio::select! {
        r = send(target, req, options) => r,
        // Nothing written yet in this attempt.
        () = paused(pause) => Err(ClientError::Paused),
    };
    let response = match sent {
        Ok(response) => response,
        Err(e) => return Err((Some(part), e)),
    };
    let mut part = match response.status() {
        StatusCode::OK if have > 0 => part.restart().await.map_err(|e| (None, e))?,
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => part,
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
            // We have everything (or more than the relay: then the check fails later).
            return Ok(part);
        }
        _ => return Err((Some(part), error_status(response).await)),
    };
    if let Some(sha) = header_text(&response, MSIM_SHA256) {
        *relay_sha = Some(sha);
    }
    part.expect_size(transfer.size);
    let mut done = part.len();
    // The grant's size is exact (0 is an empty file): a relay streaming more is refused.
    let total = transfer.size;
    if let Some(p) = progress {
        p(done, total);
    }
    // A body of at most one unit (a picture) stays in memory until the download is finished:
    // written, hashed, flushed and renamed in one blocking step, no writer thread.
    let small = header_u64(&response, header::CONTENT_LENGTH.as_str())
        .is_some_and(|n| n <= file_io::IO_UNIT as u64);
    let body = response.into_body();
    let (part, received) = if small {
        receive_held(part, body, transfer.size, &mut done, progress, total, pause).await
    } else {
        receive_streamed(part, body, transfer.size, &mut done, progress, total, pause).await?
    };
    if let Err(e) = received {
        return Err((Some(part), e));
    }
    crate::timing::mark("download-last-byte");
    if let Some(p) = progress {
        p(part.len(), total);
    }
    if part.len() < transfer.size {
        let error = ClientError::Http(format!(
            "connection closed after {} of {} bytes",
            part.len(),
            transfer.size
        ));
        return Err((Some(part), error));
    }
    Ok(part)
}
