//! The HTTP side: one hyper service that routes `/ws` to a session and
//! answers the small JSON and page endpoints.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN,
    RETRY_AFTER, SEC_WEBSOCKET_EXTENSIONS, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Grant, TokenError};
use crate::channel::ChannelName;
use crate::engine::EngineHandle;
use crate::feed::{FeedStats, FeedStatus};
use crate::metrics::Metrics;
use crate::session::{self, SessionLimits, Watchlist};
use admission::{Admission, Admitted, Refusal};

pub mod accept;
pub mod admission;
pub mod bridge;
pub mod client_ip;
pub mod observe;
pub mod publish;

/// The browser files, kept as plain files in `web/` and embedded:
/// (path, content type, body). `/tickcast.js` is the client library.
const WEB: [(&str, &str, &str); 8] = [
    ("/", HTML, include_str!("../../web/index.html")),
    ("/index.html", HTML, include_str!("../../web/index.html")),
    ("/app.js", JS, include_str!("../../web/app.js")),
    ("/tickcast.js", JS, include_str!("../../web/tickcast.js")),
    ("/dashboard", HTML, include_str!("../../web/dashboard.html")),
    ("/dashboard.js", JS, include_str!("../../web/dashboard.js")),
    (
        "/dashboard-data.js",
        JS,
        include_str!("../../web/dashboard-data.js"),
    ),
    (
        "/web.css",
        "text/css; charset=utf-8",
        include_str!("../../web/web.css"),
    ),
];
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

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
    /// Per-address and total limits on new sessions (`admission`).
    pub admission: Admission,
    /// The engine, limits, metrics and watchlist again, in the one
    /// allocation every session task points to.
    session_shared: Arc<session::Shared>,
    /// With a certificate configured, every connection is TLS (`crate::tls`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    live_sessions: AtomicUsize,
    /// `POST /publish` (`publish`); `None` answers 404.
    pub publisher: Option<publish::Publisher>,
    /// `--nats`: this node's place in the stream (`/healthz`, `/metrics`).
    pub cluster: Option<Arc<crate::nats::ClusterStatus>>,
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
            admission: Admission::new(
                crate::config::Limits::default().admission(Default::default()),
            ),
            tls: None,
            live_sessions: AtomicUsize::new(0),
            publisher: None,
            cluster: None,
        }
    }

    /// Serves `POST /publish` into `publisher`'s feed.
    /// With `--nats`, `/healthz` is not ready until the node has caught up
    /// with the stream (`crate::nats::ClusterStatus::not_ready`).
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::nats::ClusterStatus>>) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn with_publisher(mut self, publisher: publish::Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Replaces the default admission limits.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Serves every connection over TLS.
    pub fn with_tls(mut self, tls: Option<Arc<crate::tls::Tls>>) -> Self {
        self.tls = tls;
        self
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
        match state.tls.clone() {
            None => drop(tokio::spawn(serve_connection(
                TokioIo::new(stream),
                peer,
                state,
                shutdown,
            ))),
            // TLS: the handshake, then hyper on the local end of a bridge.
            Some(tls) => drop(tokio::spawn(async move {
                let limits = &state.session_limits;
                let Some(stream) = tls.accept(stream, peer, limits.handshake_timeout).await else {
                    return;
                };
                match bridge::spawn(stream, limits.write_timeout, &state.sessions) {
                    Ok(local) => serve_connection(TokioIo::new(local), peer, state, shutdown).await,
                    Err(e) => tracing::warn!(%peer, "cannot make a tls bridge socket pair: {e}"),
                }
            })),
        }
    }
}

/// Serves HTTP on one connection (the client's TCP socket, or the local end
/// of its TLS bridge) until it ends or `shutdown`.
async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: std::net::SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = state.session_limits.handshake_timeout;
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let state = state.clone();
        // For the per-address limits (see `admit`).
        req.extensions_mut().insert(PeerAddr(peer));
        async move { Ok::<_, Infallible>(route(req, &state).await) }
    });
    // The header timeout also bounds a connection that never sends
    // a request, and a kept-alive one waiting for its next request
    // (hyper starts it whenever it waits for a request head).
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(io, service)
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
}

async fn route(mut req: Request<Incoming>, state: &Arc<AppState>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/publish" {
        return publish::handle(req, state).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    if let Some(&(_, content_type, body)) = WEB.iter().find(|(p, _, _)| *p == path) {
        let mut response = Response::builder()
            .header(CONTENT_TYPE, content_type)
            .header(CACHE_CONTROL, "no-cache");
        if path == "/tickcast.js" {
            // Pages of other sites import the client as a module, which
            // browsers fetch with CORS; it is public code, readable by all.
            response = response.header(ACCESS_CONTROL_ALLOW_ORIGIN, "*");
        }
        return response
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response");
    }
    match path.as_str() {
        "/ws" => upgrade(&mut req, state),
        "/healthz" => health(state),
        "/metrics" => {
            let mut text = observe::prometheus(state);
            if let Some(cluster) = &state.cluster {
                cluster.write_prometheus(&mut text);
            }
            Response::builder()
                .header(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(text)))
                .expect("static response")
        }
        "/stats" => json(StatusCode::OK, &observe::stats_json(state).await),
        "/channels" => match (reader_grant(&req, state), state.engine.channel_list().await) {
            (Err(refused), _) => *refused,
            (Ok(grant), Ok(mut list)) => {
                // Channels of token namespaces only for a token covering them.
                let auth = &state.session_limits.auth;
                list.retain(|info| {
                    ChannelName::new(&info.name).is_ok_and(|n| auth.may_read(grant.as_ref(), &n))
                });
                json(StatusCode::OK, &serde_json::json!({ "channels": list }))
            }
            (Ok(_), Err(_)) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        },
        _ => match path.strip_prefix("/channels/") {
            Some(name) => match may_read_channel(&req, state, name) {
                Err(refused) => *refused,
                Ok(()) => match state.engine.snapshot(name).await {
                    Ok(Some(snapshot)) => json(StatusCode::OK, &snapshot),
                    Ok(None) => json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({ "error": format!("no channel named {name:?}; GET /channels lists them") }),
                    ),
                    Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
                },
            },
            None => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /dashboard, /tickcast.js, /ws, /channels, /channels/<name>, /stats, /metrics, /healthz\n",
            ),
        },
    }
}

/// `ok`, or 503 naming every feed that failed (its reason is in the log).
fn health(state: &AppState) -> Response<Body> {
    if let Some(why) = state.cluster.as_ref().and_then(|c| c.not_ready()) {
        return text(StatusCode::SERVICE_UNAVAILABLE, &why);
    }
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
    // An ingest's own state runs ahead of the stream: a client here could
    // see a record NATS never stored, whose seq a crash would then reuse.
    if state
        .cluster
        .as_ref()
        .is_some_and(|c| c.role == crate::nats::Role::Ingest)
    {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs --role ingest and serves no WebSocket clients (they could see records \
             NATS has not stored): connect to an edge (--role edge), or run this node as --role both\n",
        );
    }
    // Who may connect, before anything is spent on the connection: the
    // Origin (free to check), then the per-address limits (so a flood of
    // guessed tokens is slowed like any other), then the token.
    let auth = &state.session_limits.auth;
    let headers = req.headers();
    let origin = headers.get(ORIGIN).map(|v| v.as_bytes());
    if let Err(refused) = auth
        .origins
        .check(origin, headers.get(HOST).map(|v| v.as_bytes()))
    {
        state.metrics.origin_refused.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::FORBIDDEN, &format!("{refused}\n"));
    }
    let admitted = match admit(req, state) {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(refusal, state.admission.limits()),
    };
    let grant = match auth.admit(auth::token_from_request(req)) {
        Ok(grant) => grant.map(Arc::new),
        Err(refused) => {
            state.admission.release(admitted);
            state.metrics.auth_refused.fetch_add(1, Ordering::Relaxed);
            return unauthorized(&refused);
        }
    };
    // Reserve a slot first so concurrent upgrades cannot overshoot the limit.
    let live = state.live_sessions.fetch_add(1, Ordering::Relaxed);
    if live >= state.max_connections {
        state.live_sessions.fetch_sub(1, Ordering::Relaxed);
        state.admission.release(admitted);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections (limits.max_connections)\n",
        );
    }
    // permessage-deflate: the first offer the server can accept, if any.
    let offers = headers_of(req, SEC_WEBSOCKET_EXTENSIONS);
    let deflate = crate::deflate::negotiate(offers, &state.session_limits.compression);
    let (mut response, upgrade) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(pair) => pair,
        Err(e) => {
            state.live_sessions.fetch_sub(1, Ordering::Relaxed);
            state.admission.release(admitted);
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad upgrade request: {e}\n"),
            );
        }
    };
    let deflate = deflate.and_then(|(agreed, accepted)| {
        let value = HeaderValue::from_str(&accepted).ok()?;
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_EXTENSIONS, value);
        Some(agreed)
    });
    let slot = ConnectionSlot(state.clone(), admitted);
    let outbox = session::new_outbox(&state.session_limits, grant, deflate);
    state.sessions.spawn(session::run(
        upgrade,
        state.session_shared.clone(),
        outbox,
        slot,
    ));
    response.map(|_| Full::new(Bytes::new()))
}

/// Every value of a request header, as bytes.
fn headers_of(
    req: &Request<Incoming>,
    name: hyper::header::HeaderName,
) -> impl Iterator<Item = &[u8]> {
    req.headers()
        .get_all(name)
        .into_iter()
        .map(|v| v.as_bytes())
}

/// 401 with the reason in the body and in `WWW-Authenticate` (RFC 6750).
fn unauthorized(why: &TokenError) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, &format!("{why}\n"));
    let error = match why {
        TokenError::Missing => "Bearer".to_owned(),
        other => format!(
            "Bearer error=\"invalid_token\", error_description=\"{}\"",
            other.to_string().replace(['"', '\\'], "'")
        ),
    };
    if let Ok(value) = hyper::header::HeaderValue::from_str(&error) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
    response
}

/// The grant of the token a plain HTTP request carries, where one matters
/// (some namespace needs tokens): `Err` is the 401 for a bad token.
fn reader_grant(
    req: &Request<Incoming>,
    state: &AppState,
) -> Result<Option<Grant>, Box<Response<Body>>> {
    let auth = &state.session_limits.auth;
    if !auth.subscribe.any_need_tokens() {
        return Ok(None);
    }
    match auth::token_from_request(req) {
        None => Ok(None),
        Some(token) => auth
            .refresh(token)
            .map(Some)
            .map_err(|e| Box::new(unauthorized(&e))),
    }
}

/// `GET /channels/<name>` of a token namespace: 401 without a valid token,
/// 403 with one that does not cover the channel.
fn may_read_channel(
    req: &Request<Incoming>,
    state: &AppState,
    name: &str,
) -> Result<(), Box<Response<Body>>> {
    let Ok(name) = ChannelName::new(name) else {
        return Ok(()); // Not a channel: the lookup answers 404.
    };
    let grant = reader_grant(req, state)?;
    let auth = &state.session_limits.auth;
    if auth.may_read(grant.as_ref(), &name) {
        return Ok(());
    }
    Err(Box::new(match grant {
        None => unauthorized(&TokenError::Missing),
        Some(_) => text(
            StatusCode::FORBIDDEN,
            &format!("{name}: not covered by the token's channels claim\n"),
        ),
    }))
}

/// One of the `max_connections` places, and the client's place under the
/// per-address limit, given back when the session ends.
struct ConnectionSlot(Arc<AppState>, Admitted);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.live_sessions.fetch_sub(1, Ordering::Relaxed);
        self.0.admission.release(self.1);
    }
}

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(std::net::SocketAddr);

/// The per-address and total limits on new sessions (`admission`), for the
/// client address `client_ip` finds; a refusal is counted here.
fn admit(req: &Request<Incoming>, state: &AppState) -> Result<Admitted, Refusal> {
    let client = match req.extensions().get::<PeerAddr>() {
        Some(PeerAddr(peer)) => {
            let proxy = &state.admission.limits().proxy;
            proxy.client_ip(peer.ip(), req.headers())
        }
        // Only requests served by `serve` reach here, and it always sets it.
        None => return Ok(Admitted::EXEMPT),
    };
    state.admission.admit(client).inspect_err(|refusal| {
        let counter = match refusal {
            Refusal::PerIp => &state.metrics.refused_per_ip,
            Refusal::PerIpRate { .. } => &state.metrics.refused_per_ip_rate,
            Refusal::TotalRate { .. } => &state.metrics.refused_total_rate,
            Refusal::TableFull => &state.metrics.refused_ip_table_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%client, ?refusal, "websocket upgrade refused");
    })
}

/// The 503 for a refused upgrade: which limit, and when to come back.
fn refused(refusal: Refusal, limits: &admission::AdmissionLimits) -> Response<Body> {
    let retry_after = refusal.retry_after_secs(&mut rand::thread_rng());
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, &refusal.explain(limits));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    response
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
