//! The HTTP/1.1 plumbing of transfers: the relay URL as a target, one request per
//! connection (plain or TLS), headers and error bodies.

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Body, TransferOptions, MAX_ERROR_BODY};
use crate::error::ClientError;

pub(super) struct Target {
    pub(super) uri: Uri,
    pub(super) authority: String,
    /// `https://`: TLS with SNI and certificate check for `host`.
    pub(super) https: bool,
    pub(super) host: String,
}

pub(super) fn target(url: &str) -> Result<Target, ClientError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| ClientError::BadUrl(format!("{url}: {e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => {
            return Err(ClientError::BadUrl(format!(
                "{url}: unsupported scheme {other:?} (http or https)"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| ClientError::BadUrl(format!("{url}: no host")))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target {
        uri,
        authority,
        https,
        host,
    })
}

/// Sends one request on a fresh connection (TLS for `https://`).
pub(super) async fn send(
    target: &Target,
    request: Request<Body>,
    options: &TransferOptions,
) -> Result<Response<Incoming>, ClientError> {
    let timeout = options.timeout;
    let connect = TcpStream::connect(&target.authority);
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| ClientError::Http(format!("connecting to {} timed out", target.authority)))?
        .map_err(|e| ClientError::Http(format!("connecting to {}: {e}", target.authority)))?;
    let _ = stream.set_nodelay(true);
    if !target.https {
        return send_on(stream, request).await;
    }
    let config = options
        .tls
        .clone()
        .unwrap_or_else(msim_shared::tls::default_client_config);
    let tls = msim_shared::tls::connect(config, &target.host, stream, timeout)
        .await
        .map_err(|e| crate::client::tls_error(&target.host, &e))?;
    send_on(tls, request).await
}

async fn send_on<S>(stream: S, request: Request<Body>) -> Result<Response<Incoming>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "relay connection ended");
        }
    });
    // The body is streamed by the connection task while we wait for the answer: the whole
    // request may take long, only the headers must come within `timeout` once it is sent.
    sender
        .send_request(request)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}

pub(super) fn request(method: Method, target: &Target, token: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target.uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, target.authority.as_str())
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(
            header::USER_AGENT,
            concat!("msim/", env!("CARGO_PKG_VERSION")),
        )
}

pub(super) fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn header_u64(response: &Response<Incoming>, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn header_text(response: &Response<Incoming>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads the start of an error body for the message.
pub(super) async fn error_status(response: Response<Incoming>) -> ClientError {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut message = Vec::new();
    while message.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_ERROR_BODY - message.len();
                    message.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    ClientError::RelayStatus {
        status,
        message: String::from_utf8_lossy(&message).trim().to_owned(),
    }
}
