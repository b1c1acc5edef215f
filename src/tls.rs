//! TLS on the server's one port: https and wss with rustls.
//!
//! With `--tls-cert` and `--tls-key` (or `[tls] cert` and `key`) every
//! connection the listener takes is a TLS one. The certificate is read at
//! start-up, where any problem stops the server with what to fix, and again
//! on SIGHUP ([`Tls::reload`]): new handshakes get the new certificate,
//! connections already open keep going, and a new pair that cannot be used
//! is logged and the old one kept.
//!
//! After the handshake the connection goes through a bridge
//! (`http::bridge`), because the session's reader and writer are built on
//! the readiness API of a plain socket, which a TLS stream does not have.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The first byte of every TLS record that opens a handshake.
const HANDSHAKE_RECORD: u8 = 0x16;

/// What a plaintext HTTP client gets on the TLS port, before it is closed.
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
    content-type: text/plain; charset=utf-8\r\n\
    connection: close\r\ncontent-length: 56\r\n\r\n\
    this port serves TLS only: use https:// and wss:// here\n";

/// Where the certificate chain and its private key are read from (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server's TLS setup: a rustls config whose certificate can be swapped.
pub struct Tls {
    acceptor: TlsAcceptor,
    cert: Arc<SwappableCert>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", self.files()).finish()
    }
}

/// Hands every handshake the certificate in force when it starts.
#[derive(Debug)]
struct SwappableCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a usable certificate.
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(current.clone())
    }
}

/// ring: builds with only a C compiler (see Cargo.toml).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads both files; an error says which file and what to fix.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let cert = std::fs::read(&files.cert);
        let key = std::fs::read(&files.key);
        let certified = certified_key(&files, cert, key)?;
        let provider = provider();
        let cert = Arc::new(SwappableCert {
            files,
            current: RwLock::new(Arc::new(certified)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        // HTTP/1.1 only: WebSocket upgrades are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.cert.files
    }

    /// Reads the files again and, if they make a usable pair, serves it to
    /// every new handshake. On error the certificate in force stays.
    pub async fn reload(&self) -> Result<(), String> {
        let files = &self.cert.files;
        let cert = tokio::fs::read(&files.cert).await;
        let key = tokio::fs::read(&files.key).await;
        let certified = certified_key(files, cert, key)?;
        *self.cert.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        Ok(())
    }

    /// The end-entity certificate new handshakes get (DER).
    pub fn current_cert(&self) -> CertificateDer<'static> {
        let current = self.cert.current.read().unwrap_or_else(|e| e.into_inner());
        current.cert[0].clone()
    }

    /// The TLS handshake on an accepted connection, within `timeout`.
    /// `None` (logged at debug) when it fails; a client speaking plain HTTP
    /// is told to use https first.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let handshake = async {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 1 && first[0] != HANDSHAKE_RECORD {
                let mut stream = stream;
                stream.write_all(PLAINTEXT_ANSWER).await?;
                let _ = stream.shutdown().await;
                return Err(io::Error::other("plaintext on the TLS port"));
            }
            self.acceptor.accept(stream).await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "tls handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                None
            }
        }
    }
}

/// The chain and key from the files' contents, checked to belong together.
fn certified_key(
    files: &TlsFiles,
    cert: io::Result<Vec<u8>>,
    key: io::Result<Vec<u8>>,
) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (files.cert.display(), files.key.display());
    let cert = cert.map_err(|e| {
        format!("cannot read the TLS certificate {cert_path}: {e} (check --tls-cert / [tls] cert)")
    })?;
    let key = key.map_err(|e| {
        format!("cannot read the TLS key {key_path}: {e} (check --tls-key / [tls] key)")
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_path} holds no \"BEGIN CERTIFICATE\" block: --tls-cert wants the PEM \
             certificate chain, the server's own certificate first"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        format!(
            "{key_path}: no usable PEM private key ({e}): --tls-key wants an unencrypted \
             PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key"
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!("the key in {key_path} cannot serve the certificate in {cert_path}: {e}")
    })
}

/// Both files or neither: one alone is a mistake worth stopping for.
pub fn files(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
        })),
        (Some(_), None) => Err(
            "a TLS certificate is set (--tls-cert, or cert in [tls]) but \
             no key: TLS needs both, add --tls-key PATH (or key in [tls]) with the \
             certificate's private key"
                .to_owned(),
        ),
        (None, Some(_)) => Err("a TLS key is set (--tls-key, or key in [tls]) but no \
             certificate: TLS needs both, add --tls-cert PATH (or cert in [tls]) with the \
             certificate chain"
            .to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_answer_has_its_stated_length() {
        let text = std::str::from_utf8(PLAINTEXT_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn one_file_without_the_other_is_refused() {
        let p = Path::new("x.pem");
        assert_eq!(files(None, None), Ok(None));
        assert!(files(Some(p), None).unwrap_err().contains("add --tls-key"));
        assert!(files(None, Some(p)).unwrap_err().contains("add --tls-cert"));
        assert!(files(Some(p), Some(p)).unwrap().is_some());
    }
}
