//! Relay scenarios over real HTTP: one large transfer relayed while uploading, upload alone,
//! stored download, many small transfers on kept-alive connections, many concurrent transfers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use msim_shared::token::{Capability, Direction, Keyring};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::content;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

const CHUNK: usize = 1 << 20;

/// A kept-alive HTTP/1.1 connection to the relay.
pub struct Http {
    sender: SendRequest<BoxBody>,
    host: String,
    /// Uploads carry `Msim-Sha256: skip` (PROTOCOL.md §11.3), as `msim send-file` does for
    /// large files; downloads then accept an answer without `Msim-Sha256` (every byte is
    /// checked against the generated content all the same).
    pub skip_hash: bool,
}

impl Http {
    /// Opens a connection with TCP_NODELAY.
    pub async fn connect(addr: SocketAddr) -> Result<Http> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http {
            sender,
            host: addr.to_string(),
            skip_hash: false,
        })
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        token: &str,
        len: Option<u64>,
        body: BoxBody,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let skip_hash = self.skip_hash && method == Method::PUT;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {token}"));
        if let Some(len) = len {
            req = req.header("content-length", len);
        }
        if skip_hash {
            req = req.header("msim-sha256", "skip");
        }
        self.sender.ready().await?;
        Ok(self.sender.send_request(req.body(body)?).await?)
    }

    /// Uploads `size` bytes of generated data (no disk reads on the client side).
    pub async fn upload(&mut self, id: &str, token: &str, size: u64) -> Result<()> {
        let resp = self
            .request(
                Method::PUT,
                &path(id),
                token,
                Some(size),
                generated_body(size),
            )
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(refused(&self.host, "upload", size, status, &body));
        }
        Ok(())
    }

    /// Downloads a transfer, checking every byte against the generated file; returns how many
    /// arrived.
    pub async fn download(&mut self, id: &str, token: &str) -> Result<u64> {
        let empty = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed();
        let resp = self
            .request(Method::GET, &path(id), token, None, empty)
            .await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(
                refused(&self.host, "download", 0, status, &body).context(format!("download {id}"))
            );
        }
        let declared = resp
            .headers()
            .get("msim-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                content::check(id, got, &data)?;
                got += data.len() as u64;
            }
        }
        let want = content::sha256(got);
        let unhashed = self.skip_hash && declared.is_none();
        if !unhashed && declared.as_deref() != Some(want.as_str()) {
            bail!("download {id}: Msim-Sha256 {declared:?}, the file's SHA-256 is {want}");
        }
        Ok(got)
    }
}

/// An error for a refused relay request that says what to change when the cause is a limit
/// of the relay or a wrong secret.
fn refused(host: &str, what: &str, size: u64, status: StatusCode, body: &[u8]) -> anyhow::Error {
    let body = String::from_utf8_lossy(body);
    let body = body.trim();
    let hint = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the relay's --max-file-size is below this {size}-byte transfer (msim-load sends \
             files of --transfer-size and of 1 MiB): pass a smaller --transfer-size to \
             msim-load, or raise the relay's --max-file-size"
        ),
        StatusCode::UNAUTHORIZED => "the relay does not accept msim-load's tokens: \
             --relay-secret-file must be the relay's own secret file (msim-relay --secret-file)"
            .to_owned(),
        StatusCode::TOO_MANY_REQUESTS if body.contains("of this sender at once") => {
            "a sender has more requests in progress than the relay's \
             --max-requests-per-sender: raise it, or lower --concurrent"
                .to_owned()
        }
        StatusCode::TOO_MANY_REQUESTS => "the relay's per-sender --quota is used up: raise it, \
             or lower --transfer-size, --small-transfers or --concurrent"
            .to_owned(),
        StatusCode::INSUFFICIENT_STORAGE => "the relay is out of room (--capacity or \
             --min-free): free space on it, or lower --transfer-size, --small-transfers or \
             --concurrent"
            .to_owned(),
        _ => String::new(),
    };
    if hint.is_empty() {
        anyhow::anyhow!("relay at {host}: {what}: {status} {body}")
    } else {
        anyhow::anyhow!("relay at {host}: {what}: {status} ({body}): {hint}")
    }
}

/// Checks, before any measurement, that `addr` is an msim-relay that accepts tokens signed
/// with `keyring` and files of `size` bytes. The size check declares `size` in the token and
/// sends no body (`Content-Length: 0`): the relay refuses a too-large declared size with 413
/// before anything else and a wrong length with 400, storing nothing either way.
pub async fn check(addr: SocketAddr, keyring: &Keyring, size: u64) -> Result<()> {
    let mut http = Http::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the relay at {addr}"))?;
    let empty = || {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    };
    let resp = http
        .request(Method::GET, "/healthz", "", None, empty())
        .await
        .with_context(|| format!("GET /healthz at {addr}: is it an msim-relay?"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        bail!(
            "GET /healthz at {addr}: {status} {}: is it a healthy msim-relay?",
            String::from_utf8_lossy(&body)
        );
    }
    let id = new_id();
    let (up, _) = tokens(keyring, &id, size);
    let resp = http
        .request(Method::PUT, &path(&id), &up, Some(0), empty())
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    match status {
        // The expected answer to an empty body for a declared size; a 0-byte transfer is fine.
        StatusCode::BAD_REQUEST | StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => {
            Ok(())
        }
        _ => Err(refused(&http.host, "upload", size, status, &body)),
    }
}

fn path(id: &str) -> String {
    format!("/v1/transfers/{id}")
}

/// A body of the generated file of `size` bytes (slices of one shared pattern: no copies).
fn generated_body(size: u64) -> BoxBody {
    if size <= CHUNK as u64 {
        let data = content::piece(0, size as usize);
        return Full::new(data).map_err(|never| match never {}).boxed();
    }
    let stream = futures::stream::unfold(0u64, move |sent| async move {
        if sent >= size {
            return None;
        }
        let n = (size - sent).min(CHUNK as u64) as usize;
        Some((
            Ok::<_, std::io::Error>(Frame::data(content::piece(sent, n))),
            sent + n as u64,
        ))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Signs a pair of tokens for a new transfer.
pub fn tokens(keyring: &Keyring, id: &str, size: u64) -> (String, String) {
    tokens_declaring(keyring, id, size, true)
}

/// [`tokens`]; `declare: false` leaves the SHA-256 out (an offer of §10.7, whose upload may
/// ask the relay not to hash).
fn tokens_declaring(keyring: &Keyring, id: &str, size: u64, declare: bool) -> (String, String) {
    let expires = msim_shared::timestamp::now().unix_timestamp() as u64 + 3600;
    let sender = sender();
    let cap = |direction| Capability {
        transfer_id: id.to_owned(),
        direction,
        size,
        // The relay checks every upload against it (422 on a mismatch).
        sha256: declare.then(|| content::sha256(size)),
        sender: sender.clone(),
        max_downloads: None,
        expires,
    };
    (
        keyring.sign(&cap(Direction::Upload)),
        keyring.sign(&cap(Direction::Download)),
    )
}

/// How many senders a run's transfers are spread over, round robin: many users send at once,
/// as in real traffic, so the relay's per-sender limits (`--max-requests-per-sender`, 32 by
/// default) do not cap the concurrent scenarios.
const SENDERS: u64 = 64;

/// The sender named in the next transfer's tokens: new names each run, so that what a run
/// leaves on a long-running relay (until its TTL) does not count against the next run's
/// per-sender quota.
fn sender() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % SENDERS;
    format!("{}-{n}@localhost", super::run_id())
}

fn new_id() -> String {
    uuid_like()
}

/// A unique transfer id without pulling in another crate.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("load-{t:x}-{n}")
}

/// One transfer of `size` bytes, downloaded while it is uploaded; bytes/s end to end.
pub async fn relayed(addr: SocketAddr, keyring: &Keyring, size: u64) -> Result<f64> {
    relayed_hashing(addr, keyring, size, true).await
}

/// [`relayed`]; `hash: false` asks the relay not to hash the upload (`Msim-Sha256: skip`).
pub async fn relayed_hashing(
    addr: SocketAddr,
    keyring: &Keyring,
    size: u64,
    hash: bool,
) -> Result<f64> {
    let id = new_id();
    // A relay checks (so hashes) an upload whose token declares a SHA-256, skip or not.
    let (up, down) = tokens_declaring(keyring, &id, size, hash);
    let mut uploader = Http::connect(addr).await?;
    let mut downloader = Http::connect(addr).await?;
    uploader.skip_hash = !hash;
    downloader.skip_hash = !hash;
    let start = Instant::now();
    let mut upload = {
        let id = id.clone();
        tokio::spawn(async move { uploader.upload(&id, &up, size).await })
    };
    // The relay answers a GET for a transfer whose upload has begun; retry until it has.
    let download = async {
        loop {
            match downloader.download(&id, &down).await {
                Ok(n) => break anyhow::Ok(n),
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    downloader = Http::connect(addr).await?;
                    downloader.skip_hash = !hash;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        }
    };
    tokio::pin!(download);
    // A refused upload (a relay limit) is the error to report, not the download's.
    let got = tokio::select! {
        got = &mut download => {
            let got = got?;
            upload.await??;
            got
        }
        uploaded = &mut upload => {
            uploaded??;
            download.await?
        }
    };
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");
    Ok(size as f64 / secs)
}

/// Upload alone, then download of the stored blob: (upload bytes/s, download bytes/s).
pub async fn upload_then_download(
    addr: SocketAddr,
    keyring: &Keyring,
    size: u64,
) -> Result<(f64, f64)> {
    let id = new_id();
    let (up, down) = tokens(keyring, &id, size);
    let mut http = Http::connect(addr).await?;
    let t = Instant::now();
    http.upload(&id, &up, size).await?;
    let up_rate = size as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let got = http.download(&id, &down).await?;
    let down_rate = size as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(got == size, "downloaded {got} of {size} bytes");
    Ok((up_rate, down_rate))
}

/// What [`small`] measured.
pub struct SmallTransfers {
    /// Transfers (upload + download) per second.
    pub per_sec: f64,
    /// Seconds for one upload + download: p50 and p99.
    pub p50: f64,
    pub p99: f64,
}

/// Small transfers (upload then download) on `conns` kept-alive connections for `count`
/// transfers in all.
pub async fn small(
    addr: SocketAddr,
    keyring: &Keyring,
    size: u64,
    count: usize,
    conns: usize,
) -> Result<SmallTransfers> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for c in 0..conns {
        let keyring = keyring.clone();
        let n = count / conns + usize::from(c < count % conns);
        tasks.spawn(async move {
            let mut http = Http::connect(addr).await?;
            let mut took = Vec::with_capacity(n);
            for _ in 0..n {
                let id = new_id();
                let (up, down) = tokens(&keyring, &id, size);
                let t = Instant::now();
                http.upload(&id, &up, size).await?;
                let got = http.download(&id, &down).await?;
                anyhow::ensure!(got == size, "short download");
                took.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(took)
        });
    }
    let mut took = Vec::with_capacity(count);
    while let Some(r) = tasks.join_next().await {
        took.extend(r?.context("small transfer")?);
    }
    let per_sec = count as f64 / start.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    Ok(SmallTransfers {
        per_sec,
        p50: super::report::percentile(&took, 50.0),
        p99: super::report::percentile(&took, 99.0),
    })
}

/// `count` transfers of `size` bytes all at once, each downloaded while uploaded:
/// (transfers/s, aggregate bytes/s).
pub async fn concurrent(
    addr: SocketAddr,
    keyring: &Keyring,
    size: u64,
    count: usize,
) -> Result<(f64, f64)> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for _ in 0..count {
        let keyring = keyring.clone();
        tasks.spawn(async move { relayed(addr, &keyring, size).await });
    }
    while let Some(r) = tasks.join_next().await {
        r?.context("concurrent transfer")?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((count as f64 / secs, (count as u64 * size) as f64 / secs))
}
