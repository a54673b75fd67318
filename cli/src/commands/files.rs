//! `send-file` and `receive`: file offers, and the transfers through the relay.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::HumanBytes;
use msim::proto::{sanitize_filename, DownloadGrant, Event, FileOffered, OfferFile};
use msim::transfer::{self, HeldFile, Transfer};
use msim::{Client, ClientError, HashWatch};
use msim_shared::timestamp;

use super::receive_jobs::{Ended, Jobs, Pace, NO_PROGRESS};
use super::Ctx;
use crate::error::UsageError;
use crate::output::json::FileLine;
use crate::output::{human, progress};
use crate::settings::Settings;

/// Files from this size on are offered without a SHA-256 and hashed while they are uploaded;
/// the hash is declared afterwards (`SEND-FILE-PROXY-HASH`, PROTOCOL.md §10.7), so the file is
/// read once. Smaller ones are hashed first: that costs milliseconds, and the offer then
/// carries the hash, which the relay checks.
const DEFER_HASH_FROM: u64 = 8 << 20;

/// Whether `address` is on another server than `me` (`login@domain`): the deferred hash does
/// not cross servers, so such offers carry their hash. Unsure counts as remote.
fn on_other_server(address: &str, me: Option<&str>) -> bool {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let mine = me.and_then(|m| m.rsplit_once('@')).map(|(_, d)| d);
    mine.is_none_or(|mine| !mine.eq_ignore_ascii_case(domain.trim_end_matches('.')))
}

/// `msim send-file TO PATH [--wait SECS] [--mime TYPE]`.
pub async fn send_file(
    ctx: &Ctx<'_>,
    to: &str,
    path: &Path,
    wait: Option<u64>,
    mime: Option<String>,
) -> Result<()> {
    // A plain stat on this thread: `tokio::fs` would first start a blocking thread and hop
    // to it and back before the connection could begin (a picture's critical path; the
    // command runs alone on its runtime, so nothing else waits behind the stat).
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!(UsageError(format!("{} is not a file", path.display())));
    }
    let filename = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(sanitize_filename)
        .ok_or_else(|| UsageError(format!("{}: unusable file name", path.display())))?;
    let size = meta.len();
    let mime = mime.or_else(|| guess_mime(&filename).map(str::to_owned));
    let offer_of = |sha256: Option<String>| OfferFile {
        to: to.to_owned(),
        filename: filename.clone(),
        size,
        sha256,
        mime: mime.clone(),
    };
    let (declared, held, offer, client) = ctx
        .interruptible(async {
            if size >= DEFER_HASH_FROM && to.contains('@') {
                // A large file may go to another server, where its offer must carry the
                // hash (declarations do not cross servers): known once logged in.
                let (client, events) = ctx.settings.login().await?;
                drop(events);
                let sha256 = match on_other_server(to, client.me().as_deref()) {
                    true => Some(transfer::sha256_file(path).await?),
                    false => None,
                };
                msim::timing::mark("offer-sent");
                let offer = client.offer_file(offer_of(sha256.clone())).await?;
                return Ok((sha256, None, offer, client));
            }
            // The offer is known before the login: sent right behind it. A small file's
            // offer carries its SHA-256 (PROTOCOL.md §10.2: the relay checks the upload
            // against it), hashed from now on while connecting; a large one is hashed while
            // it is uploaded (§10.7).
            let early = (size < DEFER_HASH_FROM).then(|| EarlyHash::start(path));
            let (early, offer_of) = (&early, &offer_of);
            let (client, events, offered) = ctx
                .settings
                .login_then(|client| async move {
                    let sha256 = match early {
                        Some(early) => Some(early.get().await?.sha256.clone()),
                        None => None,
                    };
                    msim::timing::mark("offer-sent");
                    let offer = client.offer_file(offer_of(sha256.clone())).await?;
                    Ok::<_, anyhow::Error>((sha256, offer))
                })
                .await?;
            drop(events);
            let (sha256, offer) = offered?;
            // Uploaded from memory when it was read whole (and is still the size offered).
            let held = early
                .as_ref()
                .and_then(|e| e.done.get())
                .map(|h| h.bytes.clone())
                .filter(|b| b.len() as u64 == size);
            Ok((sha256, held, offer, client))
        })
        .await?;
    msim::timing::mark("offer-pending");
    let transfer_id = offer.transfer_id().to_owned();
    ctx.out.json_line(&FileLine::Pending {
        transfer_id: &transfer_id,
        to: &offer.pending.to,
        expires: timestamp::format(offer.pending.expires),
    });
    ctx.out.notice(|| {
        format!(
            "Offered {filename} ({}) to {}; waiting for them to accept… (Ctrl-C to give up)",
            HumanBytes(size),
            offer.pending.to
        )
    });
    let answer = offer.answer();
    let grant = tokio::select! {
        grant = async {
            match wait {
                Some(secs) => tokio::time::timeout(Duration::from_secs(secs), answer)
                    .await
                    .map_err(|_| anyhow!("{to} did not answer within {secs} s"))?
                    .map_err(anyhow::Error::from),
                None => answer.await.map_err(anyhow::Error::from),
            }
        } => grant?,
        _ = ctx.cancel.cancelled() => bail!("interrupted while waiting for {to}"),
    };
    msim::timing::mark("upload-grant");
    let bar = progress::bar(ctx.out.json, size, &filename);
    let upload = Transfer::from(&grant);
    let options = ctx.settings.transfer_options();
    let report = ctx
        .interruptible(async {
            let progress = Some(progress::callback(&bar));
            let upload = match (&declared, held) {
                (Some(_), Some(bytes)) => {
                    transfer::upload_bytes(&upload, bytes, progress, &options).await?
                }
                (Some(_), None) => transfer::upload(&upload, path, progress, &options).await?,
                (None, _) => transfer::upload_hashing(&upload, path, progress, &options).await?,
            };
            Ok(upload)
        })
        .await;
    bar.finish_and_clear();
    let report = report.map_err(|e| source_changed(e, path))?;
    let sha256 = match (declared, &report.source_sha256) {
        (Some(sha256), _) => sha256,
        (None, Some(sent)) => {
            // Declared whatever the relay says: the recipient checks its download against
            // what we read, so a relay that altered the bytes is caught there too.
            ctx.interruptible(async {
                client.declare_file_hash(&transfer_id, sent).await?;
                Ok(())
            })
            .await
            .context("the file was uploaded, but its SHA-256 could not be declared")?;
            sent.clone()
        }
        (None, None) => bail!("the upload did not report the file's SHA-256"),
    };
    // A hashing upload asks the relay not to hash (§11.3), so only a relay that ignores that
    // (or an upload of an offer with `sha256`) reports one to compare.
    if let Some(relay_sha) = &report.sha256 {
        if !relay_sha.eq_ignore_ascii_case(&sha256) {
            // The relay stored something else than we sent: nobody should get it.
            if let Err(e) = transfer::cancel(&upload, &options).await {
                ctx.out
                    .notice(|| format!("could not cancel the damaged transfer: {e}"));
            }
            bail!(ClientError::ChecksumMismatch {
                expected: sha256,
                actual: relay_sha.clone(),
            });
        }
    }
    let line = FileLine::Sent {
        ok: true,
        transfer_id: &transfer_id,
        to,
        filename: &filename,
        size,
        sha256: &sha256,
    };
    ctx.out.print(&line, || {
        format!("Sent {filename} ({}) to {to}.", HumanBytes(size))
    });
    // Handled: the upload grant need not come again at this user's later logins (§10.6). The
    // file is sent whatever this answer is, so a failure is only a notice.
    if let Err(e) = client.file_done(&transfer_id).await {
        ctx.out
            .notice(|| format!("the server keeps this transfer's upload grant: {e}"));
    }
    Ok(())
}

/// The relay refuses (`422`) an upload that does not match the offer's SHA-256: the file was
/// changed between hashing and sending, or while it was being sent.
fn source_changed(error: anyhow::Error, path: &Path) -> anyhow::Error {
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::RelayStatus { status: 422, .. }) => error.context(format!(
            "{} changed while it was being sent (it no longer matches the SHA-256 offered); \
             the relay discarded the upload: send it again",
            path.display()
        )),
        _ => error,
    }
}

/// What `receive` does with each offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decide {
    Accept,
    Reject,
    Ask,
}

impl Decide {
    /// `--accept-all`, `--reject-all`, or asking (which needs a terminal on stdin).
    pub fn from_flags(settings: &Settings, accept_all: bool, reject_all: bool) -> Result<Decide> {
        if accept_all {
            Ok(Decide::Accept)
        } else if reject_all {
            Ok(Decide::Reject)
        } else if std::io::stdin().is_terminal() && !settings.password_from_stdin {
            Ok(Decide::Ask)
        } else {
            bail!(UsageError(
                "cannot ask without a terminal: use --accept-all or --reject-all".into()
            ))
        }
    }
}

async fn ask(offer: &FileOffered) -> Result<bool> {
    let question = format!(
        "{} offers {} ({}). Accept? [y/N] ",
        offer.from,
        offer.filename,
        HumanBytes(offer.size)
    );
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `msim receive`: handles offers until Ctrl-C or `--count`. Accepted offers download side by
/// side (at most [`receive_jobs::MAX_DOWNLOADS`] at once, [`receive_jobs::MAX_PER_SENDER`] per
/// sender, the rest wait their turn; a slow one yields its slot to waiting ones); a transfer
/// that fails gets its own failure line and the others go on.
pub async fn receive(ctx: &Ctx<'_>, decide: Decide, out: &Path, count: Option<u64>) -> Result<()> {
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("cannot create {}", out.display()))?;
    let (client, mut events) = ctx.interruptible(ctx.settings.login()).await?;
    ctx.out.notice(|| {
        format!(
            "Waiting for files as {}; saving to {}. Ctrl-C to stop.",
            client.me().unwrap_or_default(),
            out.display()
        )
    });
    if count == Some(0) {
        return Ok(());
    }
    let mut jobs = Jobs::default();
    let mut handled = 0u64;
    loop {
        jobs.start_queued(ctx, &client, out).await;
        let all_handled = count.is_some_and(|n| handled >= n);
        if all_handled && jobs.is_idle() {
            return jobs.result(handled);
        }
        let event = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            () = jobs.next_done(ctx) => continue,
            event = events.recv(), if !all_handled => event.ok_or(ClientError::Closed)?,
        };
        let offer = match event {
            Event::FileOffered(offer) => offer,
            // Replayed at login for an offer accepted before: resumed if a run of ours left
            // its partial download here.
            Event::DownloadGrant(grant) => {
                jobs.resume(grant, out);
                continue;
            }
            Event::Message(m) if !ctx.out.json => {
                eprintln!("{}", human::event(&Event::Message(m)));
                continue;
            }
            _ => continue,
        };
        msim::timing::mark("offer-received");
        let accept = match decide {
            Decide::Accept => true,
            Decide::Reject => false,
            // Downloads in progress go on while the question waits.
            Decide::Ask => {
                let asking = ask(&offer);
                tokio::pin!(asking);
                loop {
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        accept = &mut asking => break accept?,
                        () = jobs.next_done(ctx) => {}
                    }
                }
            }
        };
        if accept {
            jobs.queue(offer);
        } else if let Err(e) = ctx.interruptible(reject(ctx, &client, &offer)).await {
            jobs.failed(ctx, &offer, &e)?;
        }
        handled += 1;
    }
}

/// Rejects `offer`.
async fn reject(ctx: &Ctx<'_>, client: &Client, offer: &FileOffered) -> Result<()> {
    client.reject_file(&offer.transfer_id).await?;
    let line = FileLine::Rejected {
        transfer_id: &offer.transfer_id,
        from: &offer.from,
        filename: &offer.filename,
    };
    ctx.out.print(&line, || {
        format!("Rejected {} from {}.", offer.filename, offer.from)
    });
    Ok(())
}

/// Accepts `offer`: its download grant, and the watch for the sender's SHA-256 when the offer
/// has none and the sender is on this server (§10.7; watched from before accepting).
pub(super) async fn accept(
    client: &Client,
    offer: &FileOffered,
) -> Result<(DownloadGrant, Option<HashWatch>)> {
    let sender_hash = hash_watch(client, offer)?;
    let grant = client.accept_file(&offer.transfer_id).await?;
    msim::timing::mark("download-grant");
    Ok((grant, sender_hash))
}

/// The watch for the sender's declared SHA-256 of `offer`: for an offer without one from a
/// user of this server (declarations do not cross servers).
pub(super) fn hash_watch(client: &Client, offer: &FileOffered) -> Result<Option<HashWatch>> {
    let me = client.me();
    Ok(match offer.sha256 {
        None if !on_other_server(&offer.from, me.as_deref()) => {
            Some(client.watch_file_hash(&offer.transfer_id)?)
        }
        _ => None,
    })
}

pub(super) async fn download_one(
    ctx: &Ctx<'_>,
    offer: &FileOffered,
    grant: &DownloadGrant,
    out: &Path,
    sender_hash: Option<&HashWatch>,
    pace: &Pace,
) -> Result<Ended> {
    let name = sanitize_filename(&grant.filename)
        .or_else(|| sanitize_filename(&offer.filename))
        .unwrap_or_else(|| format!("transfer-{}", offer.transfer_id));
    // Downloaded under a name of its own transfer (so a `.part` left by another transfer of
    // the same file name is never continued; the same transfer resumes it), then renamed.
    let staging = staging_path(out, &offer.transfer_id);
    let bar = progress::bar(ctx.out.json, grant.size, &name);
    let sha = grant.sha256.as_deref().or(offer.sha256.as_deref());
    // Kept across pauses: a download without progress is given up after NO_PROGRESS in all.
    let activity = pace.activity.clone();
    let progress: msim::Progress = {
        let (bar, activity) = (progress::callback(&bar), activity.clone());
        let pace = pace.clone();
        std::sync::Arc::new(move |done, total| {
            // Only new bytes count (a resumed request reports what it already has).
            if pace.moved_to(done) {
                activity.touch();
            }
            if done >= total {
                // What is left (the sender's hash, the rename) needs no download slot.
                pace.received_all();
            }
            bar(done, total)
        })
    };
    let (download, progress) = (Transfer::from(grant), Some(progress));
    let options = ctx.settings.transfer_options();
    // A pause is asked of the download, never done by dropping it: it returns once its
    // writer has handed the `.part` back whole, so the next turn measures a file at rest.
    let pause = tokio_util::sync::CancellationToken::new();
    let downloading = transfer::download_pausable(
        &download,
        &staging,
        sha,
        sender_hash,
        progress,
        &options,
        &pause,
    );
    let asking_to_pause = async {
        pace.too_slow_while_others_wait().await;
        pause.cancel();
        std::future::pending::<std::convert::Infallible>().await
    };
    tokio::pin!(downloading);
    let report = tokio::select! {
        r = &mut downloading => r,
        () = activity.stalled(NO_PROGRESS) => {
            // Given up through a pause, so what arrived is written to the `.part` (kept for
            // a later resume) before this returns.
            pause.cancel();
            let _ = downloading.await;
            bar.finish_and_clear();
            bail!("no progress for {}", humantime_secs(NO_PROGRESS));
        }
        never = asking_to_pause => match never {},
    };
    bar.finish_and_clear();
    // Its `.part` stays: the download goes on with a Range request at its next turn.
    if matches!(report, Err(ClientError::Paused)) {
        return Ok(Ended::Paused);
    }
    let mut report = report?;
    let dest = unique_path(out, &name);
    std::fs::rename(&staging, &dest)
        .with_context(|| format!("moving the download to {}", dest.display()))?;
    report.path = dest;
    let line = FileLine::Received {
        ok: true,
        transfer_id: &offer.transfer_id,
        from: &offer.from,
        filename: &name,
        path: &report.path,
        size: report.size,
        sha256: &report.sha256,
        verified: report.verified,
    };
    msim::timing::mark("verified");
    ctx.out.print(&line, || {
        format!(
            "Received {} ({}) from {} → {}{}",
            name,
            HumanBytes(report.size),
            offer.from,
            report.path.display(),
            if report.verified {
                " (SHA-256 verified)"
            } else {
                " (NOT verified: the sender declared no SHA-256)"
            }
        )
    });
    Ok(Ended::Finished)
}

/// Where transfer `id` is downloaded (the library adds `.part` while it runs) before it gets
/// its file name: named by the transfer, never by the file.
pub(super) fn staging_path(dir: &Path, id: &str) -> PathBuf {
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    dir.join(format!("msim-transfer-{id}"))
}

/// `dir/name`, or `dir/stem (N).ext` when that exists (or a partial download of it does not).
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let candidate = dir.join(name);
    if !candidate.exists() {
        return candidate;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(at) if at > 0 => (&name[..at], &name[at..]),
        _ => (name, ""),
    };
    for n in 1..10_000 {
        let candidate = dir.join(format!("{stem} ({n}){ext}"));
        if !candidate.exists() {
            return candidate;
        }
    }
    dir.join(format!(
        "{stem} ({}){ext}",
        timestamp::now().unix_timestamp()
    ))
}

/// The SHA-256 of the file to send, hashed on a blocking thread from the start of the
/// command (while connecting and logging in); the offer waits for what is left of it. A file
/// of at most [`HOLD_UP_TO`] bytes is kept in memory too, and uploaded from there.
struct EarlyHash {
    path: PathBuf,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<HeldFile, ClientError>>>>,
    done: tokio::sync::OnceCell<HeldFile>,
}

/// Files up to this size are read once, into memory, hashed and uploaded from there.
pub(crate) const HOLD_UP_TO: usize = 1 << 20;

impl EarlyHash {
    fn start(path: &Path) -> EarlyHash {
        let owned = path.to_owned();
        let task = tokio::spawn(async move { hash_file(&owned).await });
        EarlyHash {
            path: path.to_owned(),
            task: std::sync::Mutex::new(Some(task)),
            done: tokio::sync::OnceCell::new(),
        }
    }

    /// The hash (the early one; hashed again only if that failed and is asked for again).
    async fn get(&self) -> Result<&HeldFile> {
        self.done
            .get_or_try_init(|| async {
                let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
                match task {
                    Some(task) => task
                        .await
                        .map_err(|e| anyhow!("hashing: {e}"))?
                        .map_err(Into::into),
                    None => Ok::<_, anyhow::Error>(hash_file(&self.path).await?),
                }
            })
            .await
    }
}

/// The file's SHA-256, and its bytes if it is small (empty `bytes` otherwise).
async fn hash_file(path: &Path) -> Result<HeldFile, ClientError> {
    match transfer::read_held(path, HOLD_UP_TO).await? {
        Some(held) => Ok(held),
        None => Ok(HeldFile {
            bytes: Default::default(),
            sha256: transfer::sha256_file(path).await?,
        }),
    }
}

impl Drop for EarlyHash {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

fn guess_mime(filename: &str) -> Option<&'static str> {
    let ext = filename.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "bmp" => "image/bmp",
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        _ => return None,
    })
}

/// `d` as whole seconds, e.g. `180 s`.
fn humantime_secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}
