//! The HTTP side: one hyper service that routes `/ws` to a session and
//! answers the small JSON and page endpoints.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::EngineHandle;
use crate::feed::{FeedStats, FeedStatus};
use crate::metrics::Metrics;
use crate::session::{self, SessionLimits, Watchlist};

pub mod accept;
pub mod observe;

/// The live page served at `/`.
const PAGE: &str = include_str!("page.html");

/// Everything a request handler needs.
pub struct AppState {
    pub engine: EngineHandle,
    pub session_limits: Arc<SessionLimits>,
    pub feeds: Vec<Arc<FeedStats>>,
    /// Most WebSocket sessions at once; more get 503.
    pub max_connections: usize,
    pub sessions: TaskTracker,
    pub metrics: Arc<Metrics>,
    /// Every session's read timeouts, checked by one sweeper task.
    pub watchlist: Arc<Watchlist>,
    /// The engine, limits, metrics and watchlist again, in the one
    /// allocation every session task points to.
    session_shared: Arc<session::Shared>,
    live_sessions: AtomicUsize,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        session_limits: Arc<SessionLimits>,
        feeds: Vec<Arc<FeedStats>>,
        max_connections: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let watchlist = Arc::new(Watchlist::new(&session_limits, metrics.clone()));
        let session_shared = Arc::new(session::Shared {
            engine: engine.clone(),
            limits: session_limits.clone(),
            metrics: metrics.clone(),
            watchlist: watchlist.clone(),
        });
        Self {
            session_shared,
            engine,
            watchlist,
            session_limits,
            feeds,
            max_connections,
            metrics,
            sessions: TaskTracker::new(),
            live_sessions: AtomicUsize::new(0),
        }
    }

    pub fn live_sessions(&self) -> usize {
        self.live_sessions.load(Ordering::Relaxed)
    }
}

type Body = Full<Bytes>;

/// Accepts connections until `shutdown`; each is served on its own task.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: CancellationToken) {
    // Failed accepts (out of descriptors and the like) are handled in there.
    let mut acceptor = accept::Acceptor::new(listener, state.clone());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = acceptor.next() => accepted,
        };
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake_timeout = state.session_limits.handshake_timeout;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            // The header timeout also bounds a connection that never sends
            // a request, and a kept-alive one waiting for its next request
            // (hyper starts it whenever it waits for a request head).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "http connection ended: {e}");
                    }
                }
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn route(mut req: Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match path.as_str() {
        "/ws" => upgrade(&mut req, state),
        "/" | "/index.html" => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .header(CACHE_CONTROL, "no-cache")
            .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
            .expect("static response"),
        "/healthz" => health(state),
        "/metrics" => Response::builder()
            .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(observe::prometheus(state))))
            .expect("static response"),
        "/stats" => json(StatusCode::OK, &observe::stats_json(state).await),
        "/channels" => match state.engine.channel_list().await {
            Ok(list) => json(StatusCode::OK, &serde_json::json!({ "channels": list })),
            Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        },
        _ => match path.strip_prefix("/channels/") {
            Some(name) => match state.engine.snapshot(name).await {
                Ok(Some(snapshot)) => json(StatusCode::OK, &snapshot),
                Ok(None) => json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({ "error": format!("no channel named {name:?}; GET /channels lists them") }),
                ),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            },
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /ws, /channels, /channels/<name>, /stats, /metrics, /healthz\n",
            ),
        },
    }
}

/// `ok`, or 503 naming every feed that failed (its reason is in the log).
fn health(state: &AppState) -> Response<Body> {
    let failed: Vec<&str> = state
        .feeds
        .iter()
        .filter(|feed| feed.status() == FeedStatus::Failed)
        .map(|feed| feed.name.as_str())
        .collect();
    if failed.is_empty() {
        text(StatusCode::OK, "ok\n")
    } else {
        let names = failed.join(", ");
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: feed {names} failed (the log says why)\n"),
        )
    }
}

fn upgrade(req: &mut Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket endpoint: connect with a WebSocket client\n",
        );
    }
    // Reserve a slot first so concurrent upgrades cannot overshoot the limit.
    let live = state.live_sessions.fetch_add(1, Ordering::Relaxed);
    if live >= state.max_connections {
        state.live_sessions.fetch_sub(1, Ordering::Relaxed);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections (limits.max_connections)\n",
        );
    }
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(pair) => pair,
        Err(e) => {
            state.live_sessions.fetch_sub(1, Ordering::Relaxed);
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad upgrade request: {e}\n"),
            );
        }
    };
    let slot = ConnectionSlot(state.clone());
    state
        .sessions
        .spawn(session::run(upgrade, state.session_shared.clone(), slot));
    response.map(|_| Full::new(Bytes::new()))
}

/// One of the `max_connections` places, given back when the session ends.
struct ConnectionSlot(Arc<AppState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.live_sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("static response")
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("serializing a response");
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response")
}
