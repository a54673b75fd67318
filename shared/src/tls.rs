//! TLS for the chat connection and the relay's HTTP API: rustls (ring provider) configuration
//! from PEM files, and bounded handshakes.
//!
//! - [`server_config`]: a certificate chain PEM and a private key PEM (PKCS#8, PKCS#1 or SEC1).
//! - [`client_config`]: the Mozilla root store bundled by `webpki-roots` plus optional extra
//!   trust anchors from PEM files (a private CA, or a self-signed certificate itself). The
//!   bundled roots make verification independent of the host's certificate store (minimal
//!   containers often have none) and behave the same on every machine; deployments with their
//!   own CA add it with a CA file. Certificate verification is always on.
//! - [`accept`] / [`connect`]: handshakes with a timeout and one-line error messages.
//!
//! `rustls` and `tokio_rustls` are re-exported so that crates using these helpers need no
//! TLS dependencies of their own.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use rustls;
pub use tokio_rustls;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The TLS stream a server gets from [`accept`].
pub type ServerStream<S> = tokio_rustls::server::TlsStream<S>;
/// The TLS stream a client gets from [`connect`].
pub type ClientStream<S> = tokio_rustls::client::TlsStream<S>;

/// Default time a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS configuration could not be built. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("{}: no certificate found (expected PEM `-----BEGIN CERTIFICATE-----` blocks)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no private key found (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is malformed.
    #[error("{}: malformed PEM: {detail}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the certificate or key (e.g. the key does not match the certificate,
    /// or a CA certificate cannot be parsed).
    #[error("{}: {detail}", path.display())]
    Refused {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        detail: String,
    },
}

fn pem_error(path: &Path, e: pem::Error, none: impl FnOnce(PathBuf) -> TlsError) -> TlsError {
    match e {
        pem::Error::Io(error) => TlsError::Read {
            path: path.to_owned(),
            error,
        },
        pem::Error::NoItemsFound => none(path.to_owned()),
        other => TlsError::BadPem {
            path: path.to_owned(),
            detail: format!("{other:?}"),
        },
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let none = |path| TlsError::NoCertificate { path };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e, none))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e, none))?;
    if certs.is_empty() {
        return Err(none(path.to_owned()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| pem_error(path, e, |path| TlsError::NoKey { path }))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration from a certificate chain (leaf first) and its private key, both PEM.
/// Offers TLS 1.3 and 1.2. Callers may set `alpn_protocols` before wrapping it in an `Arc`.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: cert_path.to_owned(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Refused {
            path: key_path.to_owned(),
            detail: format!(
                "certificate {} and key do not fit: {e}",
                cert_path.display()
            ),
        })
}

/// A client configuration trusting the bundled Mozilla roots plus every certificate in
/// `ca_files` (PEM). Server certificates are always verified.
pub fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    if ca_files.is_empty() {
        return Ok(default_client_config());
    }
    build_client_config(ca_files)
}

fn build_client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in ca_files {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::Refused {
                path: path.clone(),
                detail: format!("unusable CA certificate: {e}"),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: PathBuf::from("(built-in roots)"),
            detail: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client configuration with the bundled roots only (built once).
pub fn default_client_config() -> Arc<ClientConfig> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let builder = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                // ring supports the default versions; fall back to the default builder if not.
                .unwrap_or_else(|_| ClientConfig::builder());
            Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
        })
        .clone()
}

/// The TLS server name for a host (a DNS name or an IP address, IPv6 with or without
/// brackets).
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        )
    })
}

/// A one-line description of a failed handshake (`io::Error` from tokio-rustls, which wraps
/// the `rustls::Error`).
pub fn describe(e: &io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::UnknownIssuer => {
                "certificate verification failed: the server's certificate is not signed by a \
                 trusted CA (unknown issuer)"
                    .to_owned()
            }
            rustls::CertificateError::BadSignature => {
                "certificate verification failed: bad signature".to_owned()
            }
            other if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                "certificate verification failed: the server presents a CA certificate \
                 (basicConstraints CA:TRUE) as its own; it needs a server certificate \
                 (CA:FALSE)"
                    .to_owned()
            }
            other => format!("certificate verification failed: {other}"),
        },
        Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            "the peer does not speak TLS (it sent something that is not a TLS record)".to_owned()
        }
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake (is it speaking TLS?)".to_owned()
        }
        None => e.to_string(),
    }
}

/// Whether a handshake error is about the peer's certificate (not worth retrying).
pub fn is_certificate_error(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// Server side handshake with a timeout. The error is a one-line description.
pub async fn accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> Result<ServerStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("TLS handshake failed: {}", describe(&e))),
        Err(_) => Err(format!(
            "TLS handshake timed out after {} s",
            timeout.as_secs_f32()
        )),
    }
}

/// Client side handshake with `host` (SNI and certificate name) within `timeout`. The error
/// keeps the `rustls::Error` inside (see [`describe`], [`is_certificate_error`]); a timeout is
/// `ErrorKind::TimedOut`.
pub async fn connect<S>(
    config: Arc<ClientConfig>,
    host: &str,
    stream: S,
    timeout: Duration,
) -> io::Result<ClientStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = server_name(host)?;
    match tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake with {host} timed out"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_valid_pair_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        server_config(&cert, &key).unwrap();
        client_config(std::slice::from_ref(&cert)).unwrap();
        client_config(&[]).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &key).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // A key file given as the certificate: no certificate in it.
        let e = server_config(&key, &key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
        assert!(e.to_string().contains("key.pem"), "{e}");

        // A certificate given as the key: no key in it.
        let e = server_config(&cert, &cert).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
        assert!(e.to_string().contains("cert.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = load_certs(&empty).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
        let e = client_config(std::slice::from_ref(&empty)).unwrap_err();
        assert!(e.to_string().contains("empty.pem"), "{e}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_certs(&broken).unwrap_err();
        assert!(matches!(e, TlsError::BadPem { .. }), "{e:?}");
        assert!(e.to_string().contains("broken.pem"), "{e}");

        // A key that does not belong to the certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = self_signed(other.path());
        let e = server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(e, TlsError::Refused { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_ca_certificate_as_server_certificate_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&cert_path, &key_path).unwrap()));
        let (c, s) = tokio::io::duplex(64 << 10);
        let server =
            tokio::spawn(async move { accept(&acceptor, s, HANDSHAKE_TIMEOUT).await.map(|_| ()) });
        let trusted = client_config(std::slice::from_ref(&cert_path)).unwrap();
        let e = connect(trusted, "localhost", c, HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(describe(&e).contains("CA:FALSE"), "{}", describe(&e));
        assert!(server.await.unwrap().is_err());
    }

    #[test]
    fn server_names() {
        assert!(server_name("localhost").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("bad name").is_err());
    }

    #[tokio::test]
    async fn handshake_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&cert, &key).unwrap()));
        let trusted = client_config(std::slice::from_ref(&cert)).unwrap();

        // Trusted: both sides complete.
        let (c, s) = tokio::io::duplex(64 << 10);
        let server = tokio::spawn({
            let acceptor = acceptor.clone();
            async move { accept(&acceptor, s, HANDSHAKE_TIMEOUT).await.map(|_| ()) }
        });
        let client = connect(trusted, "localhost", c, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        server.await.unwrap().unwrap();
        drop(client);

        // Default roots only: a certificate error, described in one line.
        let (c, s) = tokio::io::duplex(64 << 10);
        let server =
            tokio::spawn(async move { accept(&acceptor, s, HANDSHAKE_TIMEOUT).await.map(|_| ()) });
        let e = connect(default_client_config(), "127.0.0.1", c, HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(is_certificate_error(&e), "{e:?}");
        let text = describe(&e);
        assert!(text.contains("unknown issuer"), "{text}");
        assert!(!text.contains('\n'));
        assert!(server.await.unwrap().is_err());

        // A peer that never answers: the handshake times out.
        let (c, _s) = tokio::io::duplex(64 << 10);
        let e = connect(
            default_client_config(),
            "localhost",
            c,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
