//! Scale-out over NATS JetStream (`--nats URL`, docs/scaling.md).
//!
//! One JetStream stream (`nats.stream`, subjects `<prefix>.>`) is the one
//! truth every node shares:
//!
//! - `<prefix>.rec.<channel>`: every record the ingest accepted, in order,
//!   as `{"seq":N,"ts":INGEST_NS,"data":{..}}`;
//! - `<prefix>.snap.<channel>` and `<prefix>.meta.checkpoint`: channel
//!   snapshots and the position they cover (`snapshot.rs`);
//! - `<prefix>.meta.epoch`: the epoch, written once by whichever node comes
//!   first (an expected-last-subject-sequence of 0 makes it first-wins);
//! - `<prefix>.meta.writer`: the writer's claim and its heartbeats.
//!
//! Every node starts as a follower ([`replica`]): it loads the latest
//! snapshots, reads the stream from the last checkpoint into its own state
//! stage at the seqs it finds there (`StateStage::apply_at`), so states,
//! seqs and epoch are the same on every node. An edge keeps following. An
//! ingest, once it is caught up and the stream has been silent for
//! `nats.writer_lease_ms` (no live writer), claims the stream and becomes
//! its only writer ([`publish`]): every publish carries the stream
//! sequence it expects to follow, so a second writer's publish is refused
//! by JetStream and that node stops (fenced).

pub mod publish;
pub mod replica;
#[cfg(test)]
mod seam_tests;
mod snapshot;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use crate::channel::ChannelName;
use crate::feed::FeedStats;
use crate::record::{FeedRecord, JsonMap};
pub use publish::ReplicationTap;
pub use status::{ClusterStatus, Phase};

/// What a node does with the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the feeds and assigns seqs; publishes every record.
    Ingest,
    /// No feeds; follows the stream and serves clients.
    Edge,
    /// An ingest whose clients are served from the stream, as an edge's
    /// are: they see only records NATS stored (the default with `--nats`).
    Both,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ingest" => Ok(Role::Ingest),
            "edge" => Ok(Role::Edge),
            "both" => Ok(Role::Both),
            _ => Err(format!("--role must be ingest, edge or both, not {s:?}")),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Edge => "edge",
            Role::Both => "both",
        }
    }

    /// Whether this node runs feeds and may become the stream's writer.
    pub fn ingests(self) -> bool {
        self != Role::Edge
    }
}

/// `--nats` and `[nats]`, resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsSettings {
    pub url: String,
    pub role: Role,
    /// JetStream stream name.
    pub stream: String,
    /// First subject token of everything tickcast puts in the stream.
    pub prefix: String,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A PEM CA file for a TLS connection (TLS is then required).
    pub tls_ca: Option<PathBuf>,
    /// Records accepted but not yet stored in the stream; past it the state
    /// stage (and the feeds behind it) wait (`nats.max_pending_records`).
    pub max_pending_records: usize,
    /// A stream without a message for this long has no live writer; an
    /// ingest may then claim it (`nats.writer_lease_ms`).
    pub writer_lease: Duration,
    /// Most bytes the stream keeps; when full, publishes are refused and
    /// the ingest holds records as when NATS is down (`nats.max_stream_bytes`).
    pub max_stream_bytes: i64,
    /// How long start-up waits for the first connection.
    pub connect_timeout: Duration,
    /// The writer snapshots every channel changed since its last
    /// snapshot this often (`nats.snapshot_interval_ms`) ...
    pub snapshot_interval: Duration,
    /// ... or after this many records, whichever comes first
    /// (`nats.snapshot_interval_records`).
    pub snapshot_interval_records: u64,
    /// Records the stream keeps per channel; older ones are dropped by
    /// JetStream (`nats.max_records_per_channel`). Snapshots make them
    /// unnecessary for catch-up.
    pub max_records_per_channel: i64,
}

impl std::fmt::Debug for NatsSettings {
    // Passwords and tokens are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &self.url)
            .field("role", &self.role)
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("tls_ca", &self.tls_ca)
            .finish_non_exhaustive()
    }
}

impl NatsSettings {
    /// The defaults of `[nats]` for `url` and `role`.
    pub fn new(url: String, role: Role) -> Self {
        Self {
            url,
            role,
            stream: "TICKCAST".into(),
            prefix: "tickcast".into(),
            creds: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            max_pending_records: 65_536,
            writer_lease: Duration::from_millis(3000),
            max_stream_bytes: 10 << 30,
            connect_timeout: Duration::from_millis(5000),
            snapshot_interval: Duration::from_millis(1000),
            snapshot_interval_records: 10_000,
            max_records_per_channel: 100_000,
        }
    }

    fn record_subject(&self, channel: &str) -> String {
        format!("{}.rec.{channel}", self.prefix)
    }

    fn record_prefix(&self) -> String {
        format!("{}.rec.", self.prefix)
    }

    fn snapshot_subject(&self, channel: &str) -> String {
        format!("{}.snap.{channel}", self.prefix)
    }

    fn snapshot_prefix(&self) -> String {
        format!("{}.snap.", self.prefix)
    }

    fn checkpoint_subject(&self) -> String {
        format!("{}.meta.checkpoint", self.prefix)
    }

    fn epoch_subject(&self) -> String {
        format!("{}.meta.epoch", self.prefix)
    }

    fn writer_subject(&self) -> String {
        format!("{}.meta.writer", self.prefix)
    }
}

/// Why the NATS side could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Creds {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot connect to NATS at {url}: {reason} (is nats-server running with -js? \
         check --nats and [nats] in the config)"
    )]
    Connect { url: String, reason: String },
    #[error("NATS JetStream refused the stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("cannot read or write the epoch in the NATS stream: {0}")]
    Epoch(String),
}

/// A connected node: the client, its JetStream context and the stream.
pub struct Cluster {
    pub settings: NatsSettings,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: jetstream::stream::Stream,
    pub status: Arc<ClusterStatus>,
}

/// Connects (within `connect_timeout`), creates the stream if missing.
/// `feed` is the `nats` entry of the feed list, whose status follows the
/// connection (see [`ClusterStatus`]).
pub async fn connect(settings: NatsSettings, feed: Arc<FeedStats>) -> Result<Cluster, NatsError> {
    let status = Arc::new(ClusterStatus::new(settings.role, feed));
    let events = status.clone();
    let mut options = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => events.set_connected(true),
                    async_nats::Event::Disconnected => events.set_connected(false),
                    _ => {}
                }
            }
        })
        .name(format!("tickcast-{}", settings.role.as_str()))
        .connection_timeout(settings.connect_timeout)
        // Reconnect forever, quickly: an ingest holds records meanwhile
        // and an edge serves its last state.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        });
    if let Some(path) = &settings.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| NatsError::Creds {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &settings.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let connect_error = |reason: String| NatsError::Connect {
        url: settings.url.clone(),
        reason,
    };
    let client = tokio::time::timeout(settings.connect_timeout, options.connect(&settings.url))
        .await
        .map_err(|_| connect_error(format!("no answer within {:?}", settings.connect_timeout)))?
        .map_err(|e| connect_error(e.to_string()))?;
    let mut js = jetstream::new(client.clone());
    // A lost ack is noticed this soon; the publish is then sent again
    // (de-duplicated), so a short wait loses nothing.
    js.set_timeout(Duration::from_secs(2));
    let config = jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.prefix)],
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        max_bytes: settings.max_stream_bytes,
        duplicate_window: Duration::from_secs(120),
        // Old records of a channel go; its snapshots keep its state.
        max_messages_per_subject: settings.max_records_per_channel,
        ..Default::default()
    };
    let stream_error = |e: &dyn std::fmt::Display| NatsError::Stream {
        stream: settings.stream.clone(),
        reason: e.to_string(),
    };
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| stream_error(&e))?;
    // A stream made by an older tickcast, or with other limits: bring it
    // to these settings (JetStream keeps what it holds).
    let current = stream.cached_info().config.clone();
    if current.max_messages_per_subject != config.max_messages_per_subject
        || current.max_bytes != config.max_bytes
    {
        let updated = jetstream::stream::Config {
            max_messages_per_subject: config.max_messages_per_subject,
            max_bytes: config.max_bytes,
            ..current
        };
        js.update_stream(updated)
            .await
            .map_err(|e| stream_error(&e))?;
        stream = js
            .get_stream(&settings.stream)
            .await
            .map_err(|e| stream_error(&e))?;
    }
    Ok(Cluster {
        settings,
        client,
        js,
        stream,
        status,
    })
}

impl Cluster {
    /// The stream's epoch; the first node to ask writes `fresh` as it.
    pub async fn epoch(&self, fresh: Arc<str>) -> Result<Arc<str>, NatsError> {
        let subject = self.settings.epoch_subject();
        if let Ok(message) = self.stream.get_last_raw_message_by_subject(&subject).await {
            return epoch_from(&message.payload);
        }
        let mut headers = async_nats::HeaderMap::new();
        // Only if the subject is still empty: of two nodes starting at
        // once, one writes and both read what it wrote.
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let written = self
            .js
            .publish_with_headers(subject.clone(), headers, Bytes::from(fresh.to_string()))
            .await
            .map_err(|e| NatsError::Epoch(e.to_string()))?
            .await;
        if let Err(e) = written {
            tracing::info!("another node wrote the epoch first ({e})");
        }
        let message = self
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(|e| NatsError::Epoch(e.to_string()))?;
        epoch_from(&message.payload)
    }
}

fn epoch_from(payload: &[u8]) -> Result<Arc<str>, NatsError> {
    match std::str::from_utf8(payload) {
        Ok(epoch) if !epoch.is_empty() && epoch.len() <= 64 => Ok(Arc::from(epoch)),
        _ => Err(NatsError::Epoch(
            "the stream's epoch message is not a short UTF-8 string".into(),
        )),
    }
}

/// A record as the stream carries it.
#[derive(serde::Deserialize)]
struct Wire {
    seq: u64,
    ts: u64,
    data: JsonMap,
}

/// The largest payload `encode` makes for `record` (its seq written out in
/// full, 20 digits), counted without building it.
fn payload_len(record: &FeedRecord) -> usize {
    const ENVELOPE: usize = r#"{"seq":,"ts":,"data":}"#.len() + 2 * 20;
    ENVELOPE + crate::engine::size::counted_len(&record.data)
}

/// The payload of `record` applied at `seq`.
fn encode(record: &FeedRecord, seq: u64) -> Bytes {
    let data = serde_json::to_string(&record.data).expect("serializing a JSON map");
    Bytes::from(format!(
        "{{\"seq\":{seq},\"ts\":{},\"data\":{data}}}",
        record.ingest_ns
    ))
}

/// A record and its seq from a stream message on `channel`.
fn decode(channel: &str, payload: &[u8]) -> Result<(FeedRecord, u64), String> {
    let channel = ChannelName::new(channel).map_err(|e| format!("bad channel: {e}"))?;
    let wire: Wire = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    Ok((
        FeedRecord {
            channel,
            data: wire.data,
            ts: None,
            ingest_ns: wire.ts,
        },
        wire.seq,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_the_stream_payload() {
        let record = FeedRecord {
            channel: ChannelName::new("quotes.AAPL").unwrap(),
            data: serde_json::from_str(r#"{"bid":1.5,"x":null}"#).unwrap(),
            ts: None,
            ingest_ns: 42,
        };
        let (back, seq) = decode("quotes.AAPL", &encode(&record, 7)).unwrap();
        assert_eq!((back, seq), (record, 7));
        assert!(decode("quotes.AAPL", b"{\"seq\":1}").is_err());
        assert!(decode("bad..name", &encode(&back_record(), 1)).is_err());
    }

    fn back_record() -> FeedRecord {
        FeedRecord {
            channel: ChannelName::new("a.b").unwrap(),
            data: JsonMap::new(),
            ts: None,
            ingest_ns: 0,
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!("edge".parse::<Role>(), Ok(Role::Edge));
        assert!("leader".parse::<Role>().is_err());
        assert!(Role::Both.ingests() && !Role::Edge.ingests());
    }
}
