//! `POST /publish`: feed records over HTTP, one record or NDJSON lines per
//! body, for a web backend that has no long-lived connection to keep.
//!
//! - Who: with a publish key configured, `Authorization: Bearer KEY` is
//!   required (401 otherwise). Without one, only loopback clients may
//!   publish (403 for others, saying to set a key). The client address is
//!   the connection's peer, or the forwarded one behind a trusted proxy.
//! - What: the body is read with a bound (`limits.max_publish_body_bytes`,
//!   413 past it, never buffered further) and within
//!   `limits.handshake_timeout_ms` (408 otherwise); its lines go through the
//!   same reader and parser as every feed, counted as the feed `http`.
//! - How many: at most `limits.max_concurrent_publishes` requests are
//!   served at once (each holds up to a body); one more gets 503 with
//!   `Retry-After` before its body is read.
//! - Answer: `{"accepted":N,"rejected":[{"line":L,"error":"REASON: detail"}]}`,
//!   200 when at least one record was accepted or none was rejected (the
//!   good lines of a mixed body are taken), 400 when every non-blank line
//!   was rejected. At most [`LISTED_REJECTIONS`] are listed; the rest are
//!   counted in `rejected_not_listed`.
//! - A full ring: a request waits at most `limits.publish_ring_wait_ms`
//!   ([`RING_WAIT`] by default) in all for room;
//!   if the ring stays full the answer is 503 with `Retry-After`, the
//!   records before the first one that found no room are taken and
//!   `unsent_from_line` says where to resend from.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::Semaphore;

use super::{json, text, AppState, Body, PeerAddr};
use crate::auth::PublishKey;
use crate::feed::log_budget::EXCERPT_BYTES;
use crate::feed::FeedOutput;
use crate::record::{parse_line, LineOutcome, LineReader, RawLine};

/// The default of `limits.publish_ring_wait_ms`: how long one request may
/// wait (in all) for room in a full ring before it is answered 503: long
/// enough to ride out a burst, short enough that a stalled engine does not
/// pile up waiting requests.
pub const RING_WAIT: Duration = Duration::from_millis(200);

/// Most rejected lines listed in one answer (the rest are counted).
pub const LISTED_REJECTIONS: usize = 1000;

/// Seconds a client is told to wait after a 503 for a full ring.
const RETRY_AFTER_SECS: u32 = 1;

/// What the endpoint needs: where records go and who may send them.
pub struct Publisher {
    /// The `http` feed: the ring, its counters and its log budget.
    pub output: FeedOutput,
    pub key: Option<PublishKey>,
    pub max_body_bytes: usize,
    /// Places for requests served at once (`limits.max_concurrent_publishes`).
    pub in_flight: Arc<Semaphore>,
    /// How long the body may take to arrive.
    pub body_timeout: Duration,
    /// How long a request may wait in all for room in a full ring
    /// (`limits.publish_ring_wait_ms`, [`RING_WAIT`] by default).
    pub ring_wait: Duration,
}

/// Why a request may not publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A key is configured and the request did not carry it.
    Unauthorized,
    /// No key is configured and the client is not on loopback.
    NotLoopback,
}

/// Who may publish: the key holder when a key is configured, else only
/// loopback clients (`client` is `None` when the address is unknown, which
/// is refused like a remote one).
pub fn may_publish(
    key: Option<&PublishKey>,
    authorization: Option<&[u8]>,
    client: Option<IpAddr>,
) -> Result<(), Denied> {
    match key {
        Some(key) => match authorization {
            Some(header) if key.accepts_bearer(header) => Ok(()),
            _ => Err(Denied::Unauthorized),
        },
        None => match client {
            Some(ip) if ip.to_canonical().is_loopback() => Ok(()),
            _ => Err(Denied::NotLoopback),
        },
    }
}

/// What publishing one body gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: u64,
    /// (line, "reason: detail"), at most [`LISTED_REJECTIONS`].
    pub rejected: Vec<(u64, String)>,
    pub rejected_not_listed: u64,
    /// The ring stayed full: this line and the ones after it were not read.
    pub unsent_from_line: Option<u64>,
}

impl Outcome {
    fn rejected_total(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_not_listed
    }

    /// 503 for a full ring, 400 when nothing but rejections, else 200.
    pub fn status(&self) -> StatusCode {
        if self.unsent_from_line.is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else if self.accepted == 0 && self.rejected_total() > 0 {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let rejected: Vec<_> = self
            .rejected
            .iter()
            .map(|(line, error)| json!({ "line": line, "error": error }))
            .collect();
        let mut body = json!({ "accepted": self.accepted, "rejected": rejected });
        if self.rejected_not_listed > 0 {
            body["rejected_not_listed"] = json!(self.rejected_not_listed);
        }
        if let Some(line) = self.unsent_from_line {
            body["unsent_from_line"] = json!(line);
            body["error"] = json!(format!(
                "the ring is full (the engine is behind): lines from {line} on were not \
                 taken; send them again after Retry-After"
            ));
        }
        body
    }
}

/// Parses `body` as NDJSON feed records and hands each good one to `out`,
/// waiting at most `ring_wait` in all for room in the ring.
pub async fn publish_body(out: &FeedOutput, body: &[u8], ring_wait: Duration) -> Outcome {
    let mut outcome = Outcome::default();
    let deadline = tokio::time::Instant::now() + ring_wait;
    let mut reader = LineReader::new(body);
    let mut line_start = [0u8; EXCERPT_BYTES + 1];
    let max_depth = out.max_json_depth();
    // Reading a byte slice cannot fail; an error would only end the body.
    while let Ok(Some((line_no, raw))) = reader.next_line().await {
        let kept = match &raw {
            RawLine::Bytes(bytes) => {
                let n = bytes.len().min(line_start.len());
                line_start[..n].copy_from_slice(&bytes[..n]);
                n
            }
            RawLine::TooLong => 0,
        };
        match parse_line(line_no, raw, max_depth) {
            LineOutcome::Record(record) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !out.send_within(record, left).await {
                    outcome.unsent_from_line = Some(line_no);
                    return outcome;
                }
                outcome.accepted += 1;
            }
            LineOutcome::Blank => {}
            LineOutcome::Rejected(rejection) => {
                if outcome.rejected.len() < LISTED_REJECTIONS {
                    let error = format!("{}: {}", rejection.reason, rejection.detail);
                    outcome.rejected.push((rejection.line, error));
                } else {
                    outcome.rejected_not_listed += 1;
                }
                out.reject_line(rejection, Some(&line_start[..kept]));
            }
        }
    }
    outcome
}

/// Serves `/publish` (any method; only POST publishes).
pub async fn handle(req: Request<Incoming>, state: &AppState) -> Response<Body> {
    if req.method() != Method::POST {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST feed records here (one record or NDJSON lines)\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let Some(publisher) = &state.publisher else {
        return text(StatusCode::NOT_FOUND, "publishing over HTTP is off\n");
    };
    let client = req.extensions().get::<PeerAddr>().map(|PeerAddr(peer)| {
        let proxy = &state.admission.limits().proxy;
        proxy.client_ip(peer.ip(), req.headers())
    });
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(denied) = may_publish(publisher.key.as_ref(), authorization, client) {
        return refused(denied);
    }
    // Held until the answer is made: the body and its records are what a
    // request holds.
    let Ok(_place) = publisher.in_flight.try_acquire() else {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many publish requests at once (limits.max_concurrent_publishes); \
             retry after a moment\n",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return response;
    };
    let body = match read_body(req, publisher).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let outcome = publish_body(&publisher.output, &body, publisher.ring_wait).await;
    let mut response = json(outcome.status(), &outcome.to_json());
    if outcome.unsent_from_line.is_some() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// The whole body, at most `max_body_bytes` of it (413 past that, 408 if it
/// does not arrive in time).
async fn read_body(
    req: Request<Incoming>,
    publisher: &Publisher,
) -> Result<Bytes, Box<Response<Body>>> {
    let limit = publisher.max_body_bytes;
    let too_large = || {
        Box::new(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is over {limit} bytes (limits.max_publish_body_bytes): \
                 nothing was taken; send smaller batches\n"
            ),
        ))
    };
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(publisher.body_timeout, collect).await {
        Err(_) => Err(Box::new(text(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {} ms (limits.handshake_timeout_ms)\n",
                publisher.body_timeout.as_millis()
            ),
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!("reading the body failed: {e}\n"),
        ))),
    }
}

fn refused(denied: Denied) -> Response<Body> {
    match denied {
        Denied::Unauthorized => {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "publishing needs the publish key: send Authorization: Bearer KEY\n",
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Denied::NotLoopback => text(
            StatusCode::FORBIDDEN,
            "no publish key is set, so only loopback clients may publish: set one \
             (--publish-key KEY, env TICKCAST_PUBLISH_KEY, or publish_key in [auth]) \
             and send it as Authorization: Bearer KEY\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::feed::{FeedStats, RingItem};
    use crate::ring::Ring;

    const KEY: &str = "a-publish-key-of-some-length";

    #[test]
    fn without_a_key_only_loopback_may_publish() {
        let local = Some(IpAddr::from(Ipv4Addr::LOCALHOST));
        let v6_local = Some("::1".parse().unwrap());
        let mapped_local = Some("::ffff:127.0.0.1".parse().unwrap());
        let remote = Some(IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(may_publish(None, None, local), Ok(()));
        assert_eq!(may_publish(None, None, v6_local), Ok(()));
        assert_eq!(may_publish(None, None, mapped_local), Ok(()));
        assert_eq!(may_publish(None, None, remote), Err(Denied::NotLoopback));
        assert_eq!(may_publish(None, None, None), Err(Denied::NotLoopback));
        // A header does not stand in for a key that is not configured.
        let header = format!("Bearer {KEY}");
        assert_eq!(
            may_publish(None, Some(header.as_bytes()), remote),
            Err(Denied::NotLoopback)
        );
    }

    #[test]
    fn with_a_key_only_its_holder_may_publish_even_from_loopback() {
        let key = PublishKey::new(KEY).unwrap();
        let local = Some(IpAddr::from(Ipv4Addr::LOCALHOST));
        let remote = Some(IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)));
        let good = format!("Bearer {KEY}");
        assert_eq!(
            may_publish(Some(&key), Some(good.as_bytes()), remote),
            Ok(())
        );
        assert_eq!(
            may_publish(Some(&key), None, local),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            may_publish(Some(&key), Some(b"Bearer wrong-key-wrong-key"), local),
            Err(Denied::Unauthorized)
        );
    }

    /// A ring whose only gating consumer never reads: after `capacity`
    /// records it is full, as behind a stalled engine.
    #[tokio::test]
    async fn a_full_ring_answers_503_and_says_where_to_resend_from() {
        let ring: Ring<RingItem> = Ring::with_consumers(2, 1);
        let _stalled = ring.consumer();
        let stats = Arc::new(FeedStats::new("http".into()));
        let out = FeedOutput::new(ring.producer(), stats.clone());
        let body = b"{\"channel\":\"a.b\",\"data\":{\"x\":1}}\n\
            {\"channel\":\"a.b\",\"data\":{\"x\":2}}\n\
            {\"channel\":\"a.b\",\"data\":{\"x\":3}}\n\
            {\"channel\":\"a.b\",\"data\":{\"x\":4}}\n";
        // An unbounded wait would hang here: fail instead.
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            publish_body(&out, body, Duration::from_millis(50)),
        )
        .await
        .expect("a full ring is answered within a bounded time");
        assert_eq!(outcome.accepted, 2);
        assert_eq!(outcome.unsent_from_line, Some(3));
        assert_eq!(outcome.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stats.accepted(), 2, "only what entered the ring is counted");
        let answer = outcome.to_json();
        assert_eq!(answer["unsent_from_line"], 3);
        assert!(answer["error"].as_str().unwrap().contains("ring is full"));
    }

    #[tokio::test]
    async fn bad_lines_are_listed_and_counted_and_the_good_ones_go_through() {
        let ring: Ring<RingItem> = Ring::with_consumers(16, 1);
        let _engine = ring.consumer();
        let stats = Arc::new(FeedStats::new("http".into()));
        let out = FeedOutput::new(ring.producer(), stats.clone());
        let body =
            b"{\"channel\":\"a.b\",\"data\":{}}\n\nnope\n{\"channel\":\"a.*\",\"data\":{}}\n";
        let outcome = publish_body(&out, body, RING_WAIT).await;
        assert_eq!(outcome.accepted, 1);
        let lines: Vec<u64> = outcome.rejected.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4]);
        assert!(outcome.rejected[0].1.starts_with("invalid_json"));
        assert!(outcome.rejected[1].1.starts_with("bad_channel"));
        assert_eq!(outcome.status(), StatusCode::OK);
        assert_eq!(stats.rejected_total(), 2);
        let none_good = publish_body(&out, b"nope\n", RING_WAIT).await;
        assert_eq!(none_good.status(), StatusCode::BAD_REQUEST);
    }
}
