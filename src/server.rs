//! Wiring: ring, engine, feeds and the HTTP listener, started together and
//! stopped together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::engine::filter::FilterInterner;
use crate::engine::{self, EngineHandle, HandoffItem, HandoffProducer, Shard, StateStage};
use crate::feed::{self, FeedOutput, FeedSpec, FeedStats, RingItem};
use crate::http::admission::Admission;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::ring::Ring;
use crate::shutdown::RestartNotice;

/// Most events the hand-off ring (state stage -> shards) holds. Its slots
/// keep their last event (an `Arc` of an update with its frames) until
/// overwritten, so it is kept smaller than the feed ring; the feed ring in
/// front of the state stage absorbs bursts.
const HANDOFF_CAPACITY: usize = 4096;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot open replay file {path}: {source} (check the path given to --feed replay:PATH)"
    )]
    ReplayFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot listen for tcp producers on {addr}: {source} (pick a free port in \
         --feed tcp:ADDR, tcp:127.0.0.1:0 takes any, or stop what holds this one)"
    )]
    TcpFeed {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot open the recording {path}: {source} (check the path given to --record \
         or `record` in the config)"
    )]
    Record {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "--feed stdin is given more than once: there is one standard input (pipe several \
         producers into it with `cat a b |`, or use a tcp: feed for each)"
    )]
    StdinTwice,
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    /// A rule the settings cannot keep (see `auth::check_startup`).
    #[error("{0}")]
    Unguarded(String),
    /// `--nats`: the server could not be reached or refused the stream.
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
}

/// A server that is running; dropping it does not stop it: call `shutdown`.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    pub feeds: Vec<Arc<FeedStats>>,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting, stops the feeds, closes every session with 1001
    /// and a reconnect delay, and waits for them to finish, at most
    /// `limits.shutdown_timeout_ms` (see `crate::shutdown`).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }

    /// Waits until the server stops (after `token` given to [`start`] fires).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// A fresh epoch: changes with every process, so clients resuming across a
/// restart are resynced.
fn new_epoch() -> Arc<str> {
    let noise: u32 = rand::random();
    Arc::from(format!("{:x}{:08x}", crate::clock::unix_nanos() / 1_000_000, noise).as_str())
}

/// Fails start-up for a feed that could not start, so a typo or a busy port
/// stops the server with the reason instead of leaving it serving nothing.
/// (A feed that fails later makes `/healthz` answer 503 with its name.)
async fn check_feeds(feeds: &[FeedSpec]) -> Result<(), StartError> {
    // Two readers of one stdin would each get some of its lines, in no
    // order anyone could rely on.
    if feeds.iter().filter(|f| **f == FeedSpec::Stdin).count() > 1 {
        return Err(StartError::StdinTwice);
    }
    for spec in feeds {
        match spec {
            FeedSpec::Replay { path } => {
                tokio::fs::metadata(path)
                    .await
                    .map_err(|source| StartError::ReplayFile {
                        path: path.display().to_string(),
                        source,
                    })?;
            }
            // Bound and released at once: the feed binds it again when it
            // starts (a listener that never accepted leaves no TIME_WAIT).
            FeedSpec::Tcp { addr } => {
                drop(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::TcpFeed {
                            addr: *addr,
                            source,
                        })?,
                );
            }
            FeedSpec::Synthetic { .. } | FeedSpec::Stdin | FeedSpec::Exchange(_) => {}
        }
    }
    Ok(())
}

/// Starts everything on `listener` with `settings`; `shutdown` stops it.
pub async fn start(
    listener: TcpListener,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<RunningServer, StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    crate::auth::check_startup(
        &settings.auth,
        &settings.feeds,
        settings.publish_key.as_ref(),
    )
    .map_err(StartError::Unguarded)?;
    if settings.auth.tokens.is_none() && !addr.ip().to_canonical().is_loopback() {
        tracing::warn!(%addr, "serving beyond loopback with no token key: every channel is public \
            (see docs/security.md, \"Authentication\")");
    }
    // An edge runs no feeds: its records come from the NATS stream.
    let edge = settings
        .nats
        .as_ref()
        .is_some_and(|n| n.role == crate::nats::Role::Edge);
    let feed_specs: &[FeedSpec] = if edge { &[] } else { &settings.feeds };
    check_feeds(feed_specs).await?;
    // The state stage is the feed ring's only gating consumer.
    let ring: Ring<RingItem> = Ring::with_consumers(settings.limits.ring_capacity, 1);
    // With --nats, the epoch is the stream's, the same on every node.
    let nats_feed = Arc::new(FeedStats::new("nats".into()));
    let cluster = match &settings.nats {
        None => None,
        Some(nats) => Some(Arc::new(
            crate::nats::connect(nats.clone(), nats_feed.clone()).await?,
        )),
    };
    let epoch = match &cluster {
        None => new_epoch(),
        Some(cluster) => cluster.epoch(new_epoch()).await?,
    };
    let (handle, shard_inputs) = engine::channel(
        epoch.clone(),
        settings.engine_shards,
        settings.limits.engine_queue,
    );
    let stage = StateStage::new(
        settings.limits.engine(),
        handle.stage_stats(),
        handle.directory().clone(),
    )
    .with_namespaces(settings.namespaces.clone())
    .with_ingest_limits(settings.limits.ingest());
    // The recorder taps the records the state stage accepts.
    let (stage, recorder) = match &settings.record {
        None => (stage, None),
        Some(opts) => {
            let (tap, writer) = feed::record::start(opts, handle.stage_stats())
                .await
                .map_err(|source| StartError::Record {
                    path: opts.path.display().to_string(),
                    source,
                })?;
            (stage.with_recorder(Some(tap)), Some(writer))
        }
    };
    let stage_input = ring.consumer();
    // Every shard is a gating consumer of the hand-off ring, registered
    // before the state stage publishes, so each one sees every event.
    let handoff: Ring<HandoffItem> = Ring::with_consumers(
        settings.limits.ring_capacity.min(HANDOFF_CAPACITY),
        shard_inputs.len(),
    );
    let filters = Arc::new(std::sync::Mutex::new(FilterInterner::default()));
    let restart = RestartNotice::new(Duration::from_millis(
        settings.limits.shutdown_reconnect_spread_ms,
    ));
    let shards: Vec<_> = shard_inputs
        .into_iter()
        .map(|inputs| {
            let shard = Shard::new(
                epoch.clone(),
                settings.limits.engine(),
                inputs.stats,
                handle.directory().clone(),
                filters.clone(),
            )
            .with_namespaces(settings.namespaces.clone())
            .with_restart_notice(restart);
            (shard, handoff.consumer(), inputs.commands)
        })
        .collect();
    let handoff_producer = HandoffProducer {
        producer: handoff.producer(),
        shards: shards.len(),
    };
    drop(handoff);

    let metrics = Arc::new(Metrics::new());
    let mut feeds = Vec::new();
    let feed_shutdown = shutdown.child_token();
    let mut feed_tasks = Vec::new();
    for spec in feed_specs {
        let stats = Arc::new(FeedStats::new(spec.to_string()));
        let output = FeedOutput::new(ring.producer(), stats.clone())
            .with_metrics(metrics.clone())
            .with_max_json_depth(settings.limits.max_json_depth)
            .with_limits(settings.limits.feed())
            .with_publish_key(settings.publish_key.clone());
        let spec = spec
            .clone()
            .with_upstream_defaults(&settings.exchanges, settings.limits.upstream());
        feed_tasks.push(feed::spawn(
            spec,
            settings.replay,
            output,
            feed_shutdown.clone(),
        ));
        feeds.push(stats);
    }
    // `POST /publish` is one more feed, listed last (http::publish).
    let http_feed = Arc::new(FeedStats::new("http".into()));
    http_feed.set_status(feed::FeedStatus::Running);
    let publisher = http::publish::Publisher {
        output: FeedOutput::new(ring.producer(), http_feed.clone())
            .with_metrics(metrics.clone())
            .with_max_json_depth(settings.limits.max_json_depth)
            .with_limits(settings.limits.feed()),
        key: settings.publish_key.clone(),
        max_body_bytes: settings.limits.max_publish_body_bytes,
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            settings.limits.max_concurrent_publishes,
        )),
        body_timeout: Duration::from_millis(settings.limits.handshake_timeout_ms),
        ring_wait: Duration::from_millis(settings.limits.publish_ring_wait_ms),
    };
    // An edge has nothing to publish into: /publish answers 404 there.
    let publisher = (!edge).then_some(publisher);
    if !edge {
        feeds.push(http_feed);
    }
    if cluster.is_some() {
        feeds.push(nats_feed);
    }
    drop(ring);

    // The engine stops only once the listener is closed (below), so no
    // client is told to reconnect while new connections are still taken.
    let engine_stop = CancellationToken::new();
    let mut engine_tasks: Vec<_> = shards
        .into_iter()
        .map(|(shard, events, commands)| {
            tokio::spawn(engine::run_shard(
                shard,
                events,
                commands,
                metrics.clone(),
                engine_stop.clone(),
            ))
        })
        .collect();
    engine_tasks.push(match &cluster {
        None => tokio::spawn(engine::run_state(
            stage,
            stage_input,
            handoff_producer,
            metrics.clone(),
            engine_stop.clone(),
        )),
        Some(cluster) => tokio::spawn(crate::nats::replica::run(
            cluster.clone(),
            stage,
            stage_input,
            handoff_producer,
            metrics.clone(),
            engine_stop.clone(),
        )),
    });
    let mut session_limits = settings.limits.session(settings.direct_writes);
    session_limits.auth = settings.auth.clone();
    let mut state = AppState::new(
        handle.clone(),
        Arc::new(session_limits),
        feeds.clone(),
        settings.limits.max_connections,
        metrics,
    )
    .with_admission(Admission::new(settings.admission()))
    .with_tls(settings.tls.clone())
    .with_cluster(cluster.as_ref().map(|c| c.status.clone()));
    state.publisher = publisher;
    let state = Arc::new(state);
    if let Some(every) = settings.stats_interval {
        tokio::spawn(http::observe::log_stats(
            state.clone(),
            every,
            shutdown.clone(),
        ));
    }
    let http_state = state.clone();
    let token = shutdown.clone();
    let shutdown_timeout = Duration::from_millis(settings.limits.shutdown_timeout_ms);
    let done = tokio::spawn(async move {
        // Returns once `shutdown` fires, having dropped the listener.
        http::serve(listener, http_state.clone(), token).await;
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        engine_stop.cancel();
        let sessions = &http_state.sessions;
        let stopped = async {
            for task in feed_tasks {
                let _ = task.await;
            }
            // Each shard queues its sessions' close frames as it stops.
            for task in engine_tasks {
                let _ = task.await;
            }
            // The state stage is gone with its tap: the recorder writes
            // what is queued, flushes and closes the file.
            if let Some(recorder) = recorder {
                let _ = recorder.await;
            }
            sessions.close();
            sessions.wait().await;
        };
        if tokio::time::timeout_at(deadline, stopped).await.is_err() {
            tracing::warn!(
                "{} sessions had not finished within limits.shutdown_timeout_ms ({shutdown_timeout:?}); stopping without them",
                sessions.len()
            );
        }
    });
    Ok(RunningServer {
        addr,
        engine: handle,
        feeds,
        state,
        shutdown,
        done,
    })
}
