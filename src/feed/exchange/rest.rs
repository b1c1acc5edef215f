//! One REST GET (a depth snapshot) over hyper's HTTP/1.1 client
//! connection, on the same plain or TLS stream as the WebSocket. The body
//! is read up to `limits.max_upstream_message_bytes`; a bigger one is
//! refused without being held.

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::ws;

/// Why a GET gave no usable body.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{0}")]
    Connect(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body larger than {0} bytes (limits.max_upstream_message_bytes)")]
    TooLarge(usize),
    #[error("body is not UTF-8")]
    NotUtf8,
}

/// GETs `url` and returns its body as text.
pub async fn get(url: &str, max_body_bytes: usize) -> Result<String, GetError> {
    let target = ws::target(url).map_err(GetError::Connect)?;
    let conn = ws::open(&target).await.map_err(GetError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| GetError::Http(e.to_string()))?;
    // Drives the connection until the answer is read; ends with it.
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let host = if (target.tls && target.port == 443) || (!target.tls && target.port == 80) {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "tickcast")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| GetError::Http(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| GetError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(GetError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    GetError::TooLarge(max_body_bytes)
                } else {
                    GetError::Http(e.to_string())
                }
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| GetError::NotUtf8)
    }
    .await;
    driver.abort();
    result
}
