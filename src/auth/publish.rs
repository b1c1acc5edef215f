//! The publish key: what a producer shows before its records are taken.
//!
//! A `tcp:` producer sends `{"auth":"KEY"}` as its first line; the HTTP
//! publish endpoint (a later feature) will take `Authorization: Bearer KEY`
//! through [`PublishKey::accepts_bearer`]. Keys are compared as SHA-256
//! digests in constant time, so neither the time a comparison takes nor
//! the key's length tells a guesser anything.

use std::fmt;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::feed::FeedSpec;

/// Shortest publish key accepted.
pub const MIN_KEY_BYTES: usize = 16;

/// Longest first line read while waiting for a producer's auth line; a
/// longer one is refused without being buffered further.
pub const MAX_AUTH_LINE: usize = 4096;

/// The configured publish key, kept only as its digest.
#[derive(Clone, PartialEq, Eq)]
pub struct PublishKey {
    digest: [u8; 32],
}

impl fmt::Debug for PublishKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PublishKey(..)")
    }
}

impl PublishKey {
    pub fn new(key: &str) -> Result<Self, String> {
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the publish key is {} bytes; use at least {MIN_KEY_BYTES} \
                 (for example the output of `openssl rand -base64 24`)",
                key.len()
            ));
        }
        Ok(Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// Is `presented` the key? Constant time in the key's content.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }

    /// Checks an `Authorization` header value of the form `Bearer KEY`.
    pub fn accepts_bearer(&self, header: &[u8]) -> bool {
        match header.split_at_checked(7) {
            Some((scheme, key)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                self.accepts(key.trim_ascii())
            }
            _ => false,
        }
    }

    /// Checks a producer's first line, `{"auth":"KEY"}` (CR/LF removed).
    pub fn accepts_line(&self, line: &[u8]) -> Result<(), AuthLineError> {
        let key = auth_line_key(line).ok_or(AuthLineError::NotAnAuthLine)?;
        if self.accepts(key.as_bytes()) {
            Ok(())
        } else {
            Err(AuthLineError::WrongKey)
        }
    }
}

/// Why a producer's first line did not authenticate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthLineError {
    #[error("this feed needs a publish key: send {{\"auth\":\"KEY\"}} as the first line")]
    NotAnAuthLine,
    #[error("wrong publish key")]
    WrongKey,
}

impl AuthLineError {
    /// The line the producer is sent before it is closed.
    pub fn reply_line(&self) -> String {
        let mut line = serde_json::json!({ "error": self.to_string() }).to_string();
        line.push('\n');
        line
    }
}

/// The key in `{"auth":"KEY"}`, if the line is that.
fn auth_line_key(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct AuthLine {
        auth: String,
    }
    serde_json::from_slice::<AuthLine>(line)
        .ok()
        .map(|l| l.auth)
}

/// Start-up check: a `tcp:` feed that listens beyond loopback takes records
/// from the network, so it needs a publish key.
pub fn check_feeds(feeds: &[FeedSpec], key: Option<&PublishKey>) -> Result<(), String> {
    if key.is_some() {
        return Ok(());
    }
    for spec in feeds {
        if let FeedSpec::Tcp { addr } = spec {
            if !is_loopback(addr) {
                return Err(format!(
                    "the feed tcp:{addr} would take records from the network without a key: \
                     set a publish key (--publish-key KEY, env TICKCAST_PUBLISH_KEY, or \
                     publish_key in [auth]) that producers send first, or listen on \
                     loopback (tcp:127.0.0.1:{})",
                    addr.port()
                ));
            }
        }
    }
    Ok(())
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a-publish-key-of-some-length";

    #[test]
    fn only_the_key_is_accepted() {
        let key = PublishKey::new(KEY).unwrap();
        assert!(key.accepts(KEY.as_bytes()));
        assert!(!key.accepts(b"a-publish-key-of-some-lengtH"));
        assert!(!key.accepts(b""));
        assert!(!key.accepts(&KEY.as_bytes()[..KEY.len() - 1]));
        assert_eq!(format!("{key:?}"), "PublishKey(..)", "never printed");
        assert!(PublishKey::new("short").is_err());
    }

    #[test]
    fn lines_and_bearer_headers_carry_the_key() {
        let key = PublishKey::new(KEY).unwrap();
        assert_eq!(
            key.accepts_line(format!(r#"{{"auth":"{KEY}"}}"#).as_bytes()),
            Ok(())
        );
        assert_eq!(
            key.accepts_line(br#"{"auth":"guess"}"#),
            Err(AuthLineError::WrongKey)
        );
        assert_eq!(
            key.accepts_line(br#"{"channel":"a.b","data":{}}"#),
            Err(AuthLineError::NotAnAuthLine)
        );
        assert_eq!(
            key.accepts_line(b"AUTH x"),
            Err(AuthLineError::NotAnAuthLine)
        );
        let reply: serde_json::Value =
            serde_json::from_str(&AuthLineError::NotAnAuthLine.reply_line()).unwrap();
        assert!(reply["error"]
            .as_str()
            .unwrap()
            .contains(r#"{"auth":"KEY"}"#));
        assert!(key.accepts_bearer(format!("Bearer {KEY}").as_bytes()));
        assert!(key.accepts_bearer(format!("bearer  {KEY} ").as_bytes()));
        assert!(!key.accepts_bearer(KEY.as_bytes()));
        assert!(!key.accepts_bearer(b"Bearer nope"));
    }

    #[test]
    fn a_tcp_feed_beyond_loopback_needs_a_key() {
        let feeds: Vec<FeedSpec> = ["tcp:127.0.0.1:9100", "tcp:[::1]:9100", "synthetic"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(check_feeds(&feeds, None).is_ok());
        for open in ["tcp:0.0.0.0:9100", "tcp:[::]:9100", "tcp:192.0.2.1:9100"] {
            let feeds = vec![open.parse().unwrap()];
            let err = check_feeds(&feeds, None).unwrap_err();
            assert!(err.contains("--publish-key"), "{err}");
            let key = PublishKey::new(KEY).unwrap();
            assert!(check_feeds(&feeds, Some(&key)).is_ok());
        }
    }
}
