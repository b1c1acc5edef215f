//! Simulated matches for the synthetic feed: one small state machine per
//! match, fed real time and turning it into game seconds at its sport's
//! speed-up. Football plays 90 minutes (+ added time) in about ten real
//! minutes, basketball 4 x 12 (+ overtime while level) in about 9; after full
//! time a match waits a little, resets to 0-0 and plays again.
//!
//! Each match has its own random stream, so its events do not depend on how
//! many quotes were drawn.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::Emitter;
use crate::record::{FeedRecord, JsonMap};

const NANOS: u64 = 1_000_000_000;

/// What can happen in play.
#[derive(Clone, Copy)]
enum Kind {
    Goal,
    Shot,
    Corner,
    Foul,
    YellowCard,
    Substitution,
    TwoPointer,
    ThreePointer,
    FreeThrow,
    Timeout,
}

/// The shape of a sport's match and how much faster than life it runs.
struct Rules {
    periods: u8,
    period_secs: u32,
    /// Length of extra periods while level (basketball); 0: draws stand.
    overtime_secs: u32,
    /// Most added time per period, in whole minutes (football).
    max_stoppage_min: u32,
    /// The clock shows time left in the period, not time played.
    countdown: bool,
    /// Game seconds per real second.
    speed: u64,
    /// Home advantage: the share of events that go to the home team.
    home_share: f64,
    /// Real seconds of pause before kick-off, between periods, at half time
    /// and after full time (before the match starts over).
    pre_match_s: u64,
    between_s: u64,
    half_time_s: u64,
    after_s: u64,
    /// Chance of each event per game second; at most one fires.
    events: &'static [(Kind, f64)],
    period_names: &'static [&'static str],
}

/// 90 minutes (+ added time) at 10x: with pauses, about ten real minutes.
const FOOTBALL: Rules = Rules {
    periods: 2,
    period_secs: 45 * 60,
    overtime_secs: 0,
    max_stoppage_min: 5,
    countdown: false,
    speed: 10,
    home_share: 0.55,
    pre_match_s: 10,
    between_s: 0,
    half_time_s: 20,
    after_s: 20,
    events: &[
        (Kind::Goal, 0.0005),
        (Kind::Shot, 0.0045),
        (Kind::Corner, 0.002),
        (Kind::Foul, 0.004),
        (Kind::YellowCard, 0.0007),
        (Kind::Substitution, 0.0009),
    ],
    period_names: &["first half", "second half"],
};

/// 4 x 12 minutes (+ overtime while level) at 6x: about nine real minutes.
const BASKETBALL: Rules = Rules {
    periods: 4,
    period_secs: 12 * 60,
    overtime_secs: 5 * 60,
    max_stoppage_min: 0,
    countdown: true,
    speed: 6,
    home_share: 0.52,
    pre_match_s: 10,
    between_s: 10,
    half_time_s: 20,
    after_s: 20,
    events: &[
        (Kind::TwoPointer, 0.018),
        (Kind::ThreePointer, 0.0085),
        (Kind::FreeThrow, 0.011),
        (Kind::Foul, 0.006),
        (Kind::Timeout, 0.0015),
    ],
    period_names: &["Q1", "Q2", "Q3", "Q4"],
};

/// (league, rules, home, away, real seconds already played at start so
/// the demo opens on matches in different phases).
type Fixture = (&'static str, &'static Rules, Team, Team, u64);
/// (code, name).
type Team = (&'static str, &'static str);
#[rustfmt::skip]
const FIXTURES: [Fixture; 4] = [
    ("epl", &FOOTBALL, ("ARS", "Arsenal"), ("CHE", "Chelsea"), 200),
    ("laliga", &FOOTBALL, ("RMA", "Real Madrid"), ("BAR", "Barcelona"), 5),
    ("nba", &BASKETBALL, ("LAL", "Lakers"), ("BOS", "Celtics"), 150),
    ("nba", &BASKETBALL, ("GSW", "Warriors"), ("MIA", "Heat"), 330),
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    Scheduled,
    Live,
    Break,
    HalfTime,
    FullTime,
}

/// One match on its `scores.*` channel.
pub struct Match {
    rules: &'static Rules,
    out: Emitter,
    teams: [Team; 2],
    rng: SmallRng,
    phase: Phase,
    /// Real nanoseconds left in a pause.
    wait_ns: u64,
    /// Game nanoseconds towards the next whole game second.
    game_ns: u64,
    period: u8,
    /// Game seconds played in this period, and its length.
    secs: u32,
    period_len: u32,
    score: [u32; 2],
    /// (type, team index, minute, text) of the latest event.
    event: (&'static str, Option<usize>, u32, String),
}

impl Match {
    /// Every fixture, each with its own random stream (so one match's
    /// events do not depend on how many quotes were drawn).
    pub fn all(seed: u64) -> Vec<Match> {
        let fixtures = FIXTURES.iter().zip(0u64..);
        fixtures
            .map(|(&(league, rules, home, away, warm_up), i)| {
                let channel = format!("scores.{league}.{}-{}", home.0, away.0);
                let mut game = Match {
                    rules,
                    out: Emitter::new(&channel),
                    teams: [home, away],
                    rng: SmallRng::seed_from_u64(seed.wrapping_add(i)),
                    phase: Phase::Scheduled,
                    wait_ns: 0,
                    game_ns: 0,
                    period: 0,
                    secs: 0,
                    period_len: 0,
                    score: [0, 0],
                    event: ("scheduled", None, 0, String::new()),
                };
                game.reset();
                game.advance(warm_up * NANOS);
                game
            })
            .collect()
    }

    /// The record for what changed since the last one, if anything.
    pub fn record(&mut self) -> Option<FeedRecord> {
        let state = self.state();
        self.out.record(state)
    }

    /// Lets `dt` real nanoseconds pass.
    pub fn advance(&mut self, mut dt: u64) {
        while dt > 0 {
            if self.phase == Phase::Live {
                let to_next = (NANOS - self.game_ns).div_ceil(self.rules.speed);
                if dt < to_next {
                    self.game_ns += dt * self.rules.speed;
                    return;
                }
                dt -= to_next;
                self.game_ns = 0;
                self.game_second();
            } else {
                let used = dt.min(self.wait_ns);
                self.wait_ns -= used;
                dt -= used;
                if self.wait_ns == 0 {
                    self.end_pause();
                }
            }
        }
    }

    fn game_second(&mut self) {
        self.secs += 1;
        if self.secs >= self.period_len {
            return self.end_period();
        }
        let mut x: f64 = self.rng.gen();
        for &(kind, chance) in self.rules.events {
            if x < chance {
                return self.happen(kind);
            }
            x -= chance;
        }
    }

    fn happen(&mut self, kind: Kind) {
        let team = usize::from(!self.rng.gen_bool(self.rules.home_share));
        let (name, points, text) = match kind {
            Kind::Goal => ("goal", 1, "GOAL! {team}"),
            Kind::Shot => ("shot", 0, "Shot by {team}"),
            Kind::Corner => ("corner", 0, "Corner to {team}"),
            Kind::Foul => ("foul", 0, "Foul by {team}"),
            Kind::YellowCard => ("yellow_card", 0, "Yellow card, {team}"),
            Kind::Substitution => ("substitution", 0, "Substitution, {team}"),
            Kind::TwoPointer => ("two_pointer", 2, "{team} score 2"),
            Kind::ThreePointer => ("three_pointer", 3, "Three from {team}"),
            Kind::FreeThrow => ("free_throw", 1, "Free throw, {team}"),
            Kind::Timeout => ("timeout", 0, "Timeout, {team}"),
        };
        self.score[team] += points;
        let mut text = text.replace("{team}", self.teams[team].1);
        if points > 0 {
            text = format!("{text}: {}", self.scoreline());
        }
        self.event = (name, Some(team), self.minute(), text);
    }

    fn end_period(&mut self) {
        let rules = self.rules;
        let line = self.scoreline();
        let level = self.score[0] == self.score[1];
        let finished = self.period >= rules.periods && !(level && rules.overtime_secs > 0);
        let (phase, secs, kind, text) = if finished {
            (
                Phase::FullTime,
                rules.after_s,
                "full_time",
                "Full time".to_string(),
            )
        } else if self.period == rules.periods / 2 {
            (
                Phase::HalfTime,
                rules.half_time_s,
                "half_time",
                "Half time".to_string(),
            )
        } else {
            let text = format!("End of {}", self.period_name());
            (Phase::Break, rules.between_s, "period_end", text)
        };
        self.phase = phase;
        self.wait_ns = secs * NANOS;
        self.event = (kind, None, self.minute(), format!("{text}: {line}"));
    }

    fn end_pause(&mut self) {
        if self.phase == Phase::FullTime {
            return self.reset();
        }
        let rules = self.rules;
        self.period += 1;
        self.secs = 0;
        self.phase = Phase::Live;
        self.period_len = if self.period <= rules.periods {
            let added = match rules.max_stoppage_min {
                0 => 0,
                most => self.rng.gen_range(1..=most) * 60,
            };
            rules.period_secs + added
        } else {
            rules.overtime_secs
        };
        let text = format!("Start of {}", self.period_name());
        self.event = ("period_start", None, self.minute(), text);
    }

    /// Back to a fresh fixture waiting for kick-off.
    fn reset(&mut self) {
        self.phase = Phase::Scheduled;
        self.wait_ns = self.rules.pre_match_s * NANOS;
        (self.period, self.secs, self.period_len) = (0, 0, 0);
        self.score = [0, 0];
        let text = format!("Next: {} v {}", self.teams[0].1, self.teams[1].1);
        self.event = ("scheduled", None, 0, text);
    }

    fn period_name(&self) -> String {
        let names = self.rules.period_names;
        match names.get(usize::from(self.period).saturating_sub(1)) {
            Some(name) => (*name).to_string(),
            None => format!("OT{}", usize::from(self.period) - names.len()),
        }
    }

    /// Game seconds played in the match before this period's start.
    fn played_before(&self) -> u32 {
        let rules = self.rules;
        let done = u32::from(self.period.saturating_sub(1));
        let regular = done.min(u32::from(rules.periods));
        regular * rules.period_secs + (done - regular) * rules.overtime_secs
    }

    fn minute(&self) -> u32 {
        (self.played_before() + self.secs) / 60
    }

    fn clock(&self) -> String {
        let shown = match (self.phase, self.rules.countdown) {
            (Phase::Scheduled, true) => self.rules.period_secs,
            (Phase::Scheduled, false) => 0,
            (_, true) => self.period_len.saturating_sub(self.secs),
            (_, false) => self.played_before() + self.secs,
        };
        format!("{:02}:{:02}", shown / 60, shown % 60)
    }

    fn scoreline(&self) -> String {
        let [(home, _), (away, _)] = self.teams;
        format!("{home} {}-{} {away}", self.score[0], self.score[1])
    }

    /// The whole scoreboard, as the channel's state should read.
    pub fn state(&self) -> JsonMap {
        let status = match self.phase {
            Phase::Scheduled => "scheduled",
            Phase::Live | Phase::Break => "live",
            Phase::HalfTime => "half_time",
            Phase::FullTime => "full_time",
        };
        let (kind, team, minute, text) = &self.event;
        let mut event = JsonMap::new();
        event.insert("type".into(), Value::from(*kind));
        if let Some(team) = team {
            event.insert("team".into(), Value::from(self.teams[*team].0));
        }
        event.insert("minute".into(), Value::from(*minute));
        event.insert("text".into(), Value::from(text.as_str()));
        let mut m = JsonMap::new();
        m.insert("home".into(), Value::from(self.teams[0].0));
        m.insert("away".into(), Value::from(self.teams[1].0));
        m.insert("home_name".into(), Value::from(self.teams[0].1));
        m.insert("away_name".into(), Value::from(self.teams[1].1));
        m.insert("home_score".into(), Value::from(self.score[0]));
        m.insert("away_score".into(), Value::from(self.score[1]));
        m.insert("period".into(), Value::from(self.period));
        m.insert("clock".into(), Value::from(self.clock()));
        m.insert("status".into(), Value::from(status));
        m.insert("last_event".into(), Value::Object(event));
        m
    }
}
