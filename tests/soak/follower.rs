//! A client that follows the protocol's rule (docs/protocol.md, "The one
//! rule: check prev"), and checks what it builds.
//!
//! It keeps, per channel, the seq and state it holds and the `fields` that
//! state is restricted to; on an update whose `prev` is not its seq it has a
//! gap, and resubscribes to the channel with `since` (setting aside what
//! arrives before the answer). On the producer's channels it checks its
//! state against the oracle ([`super::feed::state`]) at every seq. It owns
//! no socket: it takes the server's messages and returns what to send.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::feed::{self, is_ours, is_stream, restrict};
use super::Tally;

pub struct Held {
    pub seq: u64,
    pub state: Value,
    pub fields: Option<Vec<String>>,
}

/// A subscription as the server holds it, after its `subscribed` reply.
struct Sub {
    target: String,
    fields: Option<Vec<String>>,
}

enum Request {
    Subscribe {
        targets: Vec<String>,
        fields: Option<Vec<String>>,
    },
    Unsubscribe {
        targets: Vec<String>,
    },
    Ping,
}

pub struct Follower {
    pub held: HashMap<String, Held>,
    epoch: Option<String>,
    /// Per connection: the answered subscriptions (latest last), the
    /// requests not yet answered, and the channels resumed by a subscribe
    /// not yet answered (its id).
    subs: Vec<Sub>,
    pending: HashMap<i64, Request>,
    frozen: HashMap<String, i64>,
    /// Channels resumed by an answered subscribe, until their first message
    /// says how (replayed updates, or a resync snapshot).
    resuming: HashSet<String>,
    /// The next resume sends an epoch that is not the server's (as a client
    /// that kept its positions across a server restart would).
    foreign_epoch_next: bool,
    /// Subscribes sent with such an epoch, and the channels they resumed:
    /// each must be answered with a resync snapshot, never a replay.
    foreign: HashSet<i64>,
    must_resync: HashSet<String>,
    /// Channels that flow on this connection now.
    live: HashSet<String>,
    /// The targets and fields of the latest `subscribed` reply: a snapshot
    /// of a channel they cover follows that subscribe's options.
    last_reply: Option<(Vec<String>, Option<Vec<String>>)>,
    next_id: i64,
    who: String,
}

/// NATS-style match: `*` one segment, a final `>` one or more.
pub fn covers(target: &str, channel: &str) -> bool {
    let mut want = target.split('.');
    let mut have = channel.split('.');
    loop {
        match (want.next(), have.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(h)) if w == h => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Follower {
    pub fn new(who: String) -> Self {
        Self {
            held: HashMap::new(),
            epoch: None,
            subs: Vec::new(),
            pending: HashMap::new(),
            frozen: HashMap::new(),
            resuming: HashSet::new(),
            foreign_epoch_next: false,
            foreign: HashSet::new(),
            must_resync: HashSet::new(),
            live: HashSet::new(),
            last_reply: None,
            next_id: 1,
            who,
        }
    }

    /// A new connection owes nothing to the old one's requests; the states
    /// held are kept, to resume from.
    pub fn new_connection(&mut self) {
        self.subs.clear();
        self.pending.clear();
        self.frozen.clear();
        self.resuming.clear();
        self.foreign.clear();
        self.must_resync.clear();
        self.live.clear();
        self.last_reply = None;
    }

    /// The subscriptions in place.
    pub fn targets(&self) -> Vec<String> {
        self.subs.iter().map(|s| s.target.clone()).collect()
    }

    /// Makes the next resume send a foreign epoch.
    pub fn pretend_a_restart(&mut self) {
        self.foreign_epoch_next = true;
    }

    /// A subscribe for `targets`, resuming (with `since` and `epoch`) every
    /// held channel they cover whose state has the same `fields`.
    pub fn subscribe(
        &mut self,
        targets: &[String],
        fields: Option<Vec<String>>,
        max_hz: Option<f64>,
        tally: &Tally,
    ) -> String {
        let id = self.take_id();
        let since: serde_json::Map<String, Value> = match &self.epoch {
            None => Default::default(),
            Some(_) => self
                .held
                .iter()
                .filter(|(c, h)| h.fields == fields && targets.iter().any(|t| covers(t, c)))
                .map(|(c, h)| (c.clone(), json!(h.seq)))
                .collect(),
        };
        for channel in since.keys() {
            self.frozen.insert(channel.clone(), id);
        }
        let mut m = json!({"op": "subscribe", "id": id, "channels": targets});
        if let Some(f) = &fields {
            m["fields"] = json!(f);
        }
        if let Some(hz) = max_hz {
            m["max_hz"] = json!(hz);
        }
        if !since.is_empty() {
            Tally::bump(&tally.resumes);
            m["since"] = Value::Object(since);
            m["epoch"] = json!(self.epoch);
            if std::mem::take(&mut self.foreign_epoch_next) {
                Tally::bump(&tally.foreign_epochs);
                self.foreign.insert(id);
                m["epoch"] = json!("not-this-servers-epoch");
            }
        }
        self.pending.insert(
            id,
            Request::Subscribe {
                targets: targets.to_vec(),
                fields,
            },
        );
        m.to_string()
    }

    pub fn unsubscribe(&mut self, targets: &[String]) -> String {
        let id = self.take_id();
        self.pending.insert(
            id,
            Request::Unsubscribe {
                targets: targets.to_vec(),
            },
        );
        json!({"op": "unsubscribe", "id": id, "channels": targets}).to_string()
    }

    pub fn ping(&mut self) -> String {
        let id = self.take_id();
        self.pending.insert(id, Request::Ping);
        json!({"op": "ping", "id": id}).to_string()
    }

    fn take_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// The fields of the latest subscription covering `channel`, if any.
    fn fields_for(&self, channel: &str) -> Option<Option<Vec<String>>> {
        self.subs
            .iter()
            .rev()
            .find(|s| covers(&s.target, channel))
            .map(|s| s.fields.clone())
    }

    /// Whether a subscription of this connection covers `channel`.
    pub fn covered(&self, channel: &str) -> bool {
        self.fields_for(channel).is_some()
    }

    /// The producer's channels this connection subscribes to whose state
    /// is not (yet) the server's final one, `finals`, restricted to the
    /// subscription's fields.
    pub fn unsettled(&self, finals: &HashMap<String, Value>) -> Vec<String> {
        let mut left: Vec<String> = finals
            .iter()
            .filter(|(c, _)| self.covered(c))
            .filter(|(c, data)| match self.held.get(*c) {
                Some(held) if !self.frozen.contains_key(*c) => {
                    held.state != restrict(data, held.fields.as_deref())
                }
                _ => true,
            })
            .map(|(c, _)| c.clone())
            .collect();
        left.sort();
        left
    }

    /// The synthetic feed's channels this connection subscribes to without
    /// `fields` and holds (not awaiting a resume).
    pub fn synthetic_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self
            .held
            .iter()
            .filter(|(c, h)| {
                !is_ours(c)
                    && h.fields.is_none()
                    && self.covered(c)
                    && !self.frozen.contains_key(*c)
            })
            .map(|(c, _)| c.clone())
            .collect();
        channels.sort();
        channels
    }

    /// The seq held for `channel`, unless it awaits a resume.
    pub fn held_seq(&self, channel: &str) -> Option<u64> {
        match self.frozen.contains_key(channel) {
            true => None,
            false => self.held.get(channel).map(|h| h.seq),
        }
    }

    /// Whether the state held equals the server's `data` at `seq`
    /// (restricted to the fields); None if the client does not hold `seq`.
    pub fn matches_at(&self, channel: &str, seq: u64, data: &Value) -> Option<bool> {
        let held = self.held.get(channel)?;
        if held.seq != seq || self.frozen.contains_key(channel) {
            return None;
        }
        Some(held.state == restrict(data, held.fields.as_deref()))
    }

    /// What the client holds for `channel`, for a failure message.
    pub fn describe(&self, channel: &str) -> String {
        match self.held.get(channel) {
            Some(h) => format!(
                "seq {} fields {:?} state {}{}",
                h.seq,
                h.fields,
                h.state,
                if self.frozen.contains_key(channel) {
                    " (awaiting a resume)"
                } else {
                    ""
                }
            ),
            None => "nothing".into(),
        }
    }

    fn violation(&self, tally: &Tally, what: String) {
        tally.violation(format!("{}: {what}", self.who));
    }

    /// Applies one server message. Returns a subscribe to send if the
    /// message showed a gap.
    pub fn on_text(&mut self, text: &str, tally: &Tally) -> Option<String> {
        let m: Value = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                self.violation(tally, format!("server sent bad JSON ({e}): {text}"));
                return None;
            }
        };
        let channel = m["channel"].as_str().unwrap_or("").to_owned();
        match m["type"].as_str().unwrap_or("") {
            "subscribed" => self.on_reply(&m, tally),
            "unsubscribed" => self.on_reply(&m, tally),
            "pong" => {
                self.on_reply(&m, tally);
            }
            "error" => self.violation(tally, format!("error answering a valid request: {m}")),
            _ if self.frozen.contains_key(&channel) => {}
            "snapshot" => self.on_snapshot(&channel, &m, tally),
            "update" => return self.on_update(&channel, &m, tally),
            _ => self.violation(tally, format!("unexpected message: {m}")),
        }
        None
    }

    fn on_reply(&mut self, m: &Value, tally: &Tally) {
        let id = m["id"].as_i64().unwrap_or(-1);
        match self.pending.remove(&id) {
            Some(Request::Subscribe { targets, fields }) => {
                for target in &targets {
                    self.subs.retain(|s| &s.target != target);
                    self.subs.push(Sub {
                        target: target.clone(),
                        fields: fields.clone(),
                    });
                }
                let (resuming, must_resync) = (&mut self.resuming, &mut self.must_resync);
                let foreign = self.foreign.remove(&id);
                self.frozen.retain(|c, waiting| {
                    let answered = *waiting == id;
                    if answered {
                        resuming.insert(c.clone());
                        if foreign {
                            must_resync.insert(c.clone());
                        }
                    }
                    !answered
                });
                self.last_reply = Some((targets, fields));
            }
            Some(Request::Unsubscribe { targets }) => {
                self.subs.retain(|s| !targets.contains(&s.target));
                let subs = &self.subs;
                self.live
                    .retain(|c| subs.iter().any(|s| covers(&s.target, c)));
            }
            Some(Request::Ping) => {}
            None => self.violation(tally, format!("a reply to nothing asked: {m}")),
        }
    }

    fn on_snapshot(&mut self, channel: &str, m: &Value, tally: &Tally) {
        let (Some(seq), Some(epoch)) = (m["seq"].as_u64(), m["epoch"].as_str()) else {
            return self.violation(tally, format!("a snapshot without seq or epoch: {m}"));
        };
        let Some(latest) = self.fields_for(channel) else {
            return self.violation(
                tally,
                format!("a snapshot for a channel not subscribed: {m}"),
            );
        };
        // Whose options the channel follows: the subscribe just answered if
        // it covers the channel; else, if the channel flows already (a held
        // diff sent as a snapshot), the options it has; else (a channel
        // that appeared) the latest subscribe covering it.
        let fields = match (&self.last_reply, self.held.get(channel)) {
            (Some((targets, fields)), _) if targets.iter().any(|t| covers(t, channel)) => {
                fields.clone()
            }
            (_, Some(held)) if self.live.contains(channel) => held.fields.clone(),
            _ => latest,
        };
        self.resuming.remove(channel);
        let resync = m["resync"].as_bool() == Some(true);
        if resync {
            Tally::bump(&tally.resyncs);
        }
        if self.must_resync.remove(channel) && !resync {
            self.violation(
                tally,
                format!("a resume with a foreign epoch got a plain snapshot: {m}"),
            );
        }
        if self.epoch.as_deref().is_some_and(|e| e != epoch) {
            self.violation(tally, format!("the epoch changed without a restart: {m}"));
        }
        self.epoch = Some(epoch.to_owned());
        let held = Held {
            seq,
            state: m["data"].clone(),
            fields,
        };
        self.check_oracle(channel, &held, m, tally);
        self.held.insert(channel.to_owned(), held);
        self.live.insert(channel.to_owned());
    }

    fn on_update(&mut self, channel: &str, m: &Value, tally: &Tally) -> Option<String> {
        let (Some(seq), Some(prev)) = (m["seq"].as_u64(), m["prev"].as_u64()) else {
            self.violation(tally, format!("an update without seq or prev: {m}"));
            return None;
        };
        if !self.covered(channel) {
            self.violation(
                tally,
                format!("an update for a channel not subscribed: {m}"),
            );
            return None;
        }
        let Some(held) = self.held.get_mut(channel) else {
            self.violation(tally, format!("an update before any snapshot: {m}"));
            return None;
        };
        if self.must_resync.remove(channel) {
            tally.violation(format!(
                "{}: a resume with a foreign epoch was answered with updates: {m}",
                self.who
            ));
        }
        if prev != held.seq {
            // The rule: resubscribe with since, ignore the channel until then.
            Tally::bump(&tally.gaps);
            let fields = held.fields.clone();
            return Some(self.subscribe(&[channel.to_owned()], fields, None, tally));
        }
        if self.resuming.remove(channel) {
            Tally::bump(&tally.replays);
        }
        if seq <= prev {
            tally.violation(format!("{}: seq did not grow: {m}", self.who));
            return None;
        }
        if is_ours(channel) && is_stream(channel) && held.fields.is_none() && seq != prev + 1 {
            tally.violation(format!("{}: a stream update skipped seqs: {m}", self.who));
        }
        crate::common::merge(&mut held.state, &m["data"]);
        held.seq = seq;
        Tally::bump(&tally.updates);
        self.live.insert(channel.to_owned());
        let held = &self.held[channel];
        self.check_oracle(channel, held, m, tally);
        None
    }

    /// On the producer's channels, the state held must be the oracle's at
    /// that seq: anything lost or misapplied shows here.
    fn check_oracle(&self, channel: &str, held: &Held, m: &Value, tally: &Tally) {
        if !is_ours(channel) {
            return;
        }
        let want = restrict(&feed::state(channel, held.seq), held.fields.as_deref());
        if held.state != want {
            self.violation(
                tally,
                format!(
                    "wrong state on {channel} at seq {} after {m}: have {}, want {want}",
                    held.seq, held.state
                ),
            );
        }
    }
}

#[test]
fn patterns_cover_as_nats_subjects_do() {
    assert!(covers("soak.*", "soak.k1"));
    assert!(!covers("soak.*", "soak.k1.x"));
    assert!(covers("scores.>", "scores.epl.ARS-CHE"));
    assert!(!covers("scores.>", "scores"));
    assert!(covers("quotes.AAPL", "quotes.AAPL"));
    assert!(!covers("quotes.AAPL", "quotes.AAP"));
}
