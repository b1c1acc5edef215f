//! The upstream WebSocket connection: `ws://` over TCP or `wss://` over
//! tokio-rustls (ring provider, Mozilla roots from webpki-roots), with
//! tungstenite's message and frame size capped at
//! `limits.max_upstream_message_bytes`, so a huge frame is refused from its
//! header instead of being buffered.

use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A byte stream to upstream, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A plain or TLS stream to upstream, as one type for the WebSocket and
/// for REST (a box: one allocation per connection).
pub type Conn = Box<dyn Io>;

/// What a URL says to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, at least "/".
    pub path: String,
}

/// Splits `ws[s]://` or `http[s]://` URLs.
pub fn target(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("wss" | "https") => true,
        Some("ws" | "http") => false,
        _ => {
            return Err(format!(
                "{url:?}: the scheme must be ws, wss, http or https"
            ))
        }
    };
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

fn tls_connector() -> TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    TlsConnector::from(config.clone())
}

/// Opens TCP (and TLS when the target says so).
pub async fn open(target: &Target) -> Result<Conn, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return Ok(Box::new(tcp));
    }
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{:?} is not a TLS server name: {e}", target.host))?;
    let tls = tls_connector()
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {} failed: {e}", target.host))?;
    Ok(Box::new(tls))
}

/// Connects and makes the WebSocket handshake for `url`.
pub async fn connect(url: &str, max_message_bytes: usize) -> Result<WebSocketStream<Conn>, String> {
    let target = target(url)?;
    let conn = open(&target).await?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes));
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, conn, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {url} failed: {e}"))?;
    Ok(ws)
}
