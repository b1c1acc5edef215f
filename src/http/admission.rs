//! Who may open a WebSocket now: limits per client address and in total,
//! checked before the upgrade so a refused client costs one short answer.
//!
//! - `limits.max_connections_per_ip` sessions at once per address;
//! - `limits.new_connections_per_ip_per_sec` new sessions a second per
//!   address, and `limits.new_connections_per_sec` over all addresses (each
//!   allows a burst of one second's worth), so a reconnect storm after a
//!   restart is spread out rather than served all at once.
//!
//! A refused upgrade gets 503 with `Retry-After`: the seconds until the
//! limit would let it in (at least 1), plus a random 0 to
//! [`RETRY_AFTER_SPREAD_SECS`], so the clients refused together do not all
//! come back together.
//!
//! Addresses are the client's ([`super::client_ip`]); an IPv6 client counts
//! by its /64, since one host is usually given a whole /64. Addresses in
//! `limits.connection_limits_exempt` (loopback by default: load
//! generators, a proxy on the same host not yet configured as trusted) skip
//! these limits; `limits.max_connections` still applies to them.
//!
//! What is kept per address is a count and one rate timestamp, in a table
//! of at most `limits.max_tracked_ips` entries. When it is full, entries
//! that hold nothing (no session open, rate allowance refilled) are swept
//! out, at most once per [`SWEEP_EVERY`]; if it is still full, a new
//! address is refused (503) until entries free up. Addresses already in the
//! table are served as usual.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use super::client_ip::{AddrRange, TrustedProxy};
use crate::rate::{self, Allowance, Rate};

/// The random part of `Retry-After` is at most this many seconds.
pub const RETRY_AFTER_SPREAD_SECS: u64 = 4;
/// A full table is swept at most this often.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits, from the config.
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    pub max_connections_per_ip: u32,
    pub new_connections_per_ip_per_sec: u32,
    pub new_connections_per_sec: u32,
    pub max_tracked_ips: usize,
    pub exempt: Vec<AddrRange>,
    pub proxy: TrustedProxy,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_ip` sessions open from this address.
    PerIp,
    /// New sessions from this address came faster than its rate.
    PerIpRate { wait: Duration },
    /// New sessions from everyone came faster than the total rate.
    TotalRate { wait: Duration },
    /// The table of addresses is full of active ones.
    TableFull,
}

impl Refusal {
    /// The `Retry-After` seconds: the wait rounded up (at least 1) plus a
    /// random spread.
    pub fn retry_after_secs(&self, rng: &mut impl Rng) -> u64 {
        let wait = match self {
            Refusal::PerIpRate { wait } | Refusal::TotalRate { wait } => *wait,
            Refusal::PerIp | Refusal::TableFull => Duration::ZERO,
        };
        let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
        secs + rng.gen_range(0..=RETRY_AFTER_SPREAD_SECS)
    }

    /// The answer's text: which limit, and its key.
    pub fn explain(&self, limits: &AdmissionLimits) -> String {
        match self {
            Refusal::PerIp => format!(
                "too many connections from your address (limits.max_connections_per_ip = {})\n",
                limits.max_connections_per_ip
            ),
            Refusal::PerIpRate { .. } => format!(
                "too many new connections from your address \
                 (limits.new_connections_per_ip_per_sec = {}); retry later\n",
                limits.new_connections_per_ip_per_sec
            ),
            Refusal::TotalRate { .. } => format!(
                "too many new connections to this server \
                 (limits.new_connections_per_sec = {}); retry later\n",
                limits.new_connections_per_sec
            ),
            Refusal::TableFull => format!(
                "too many client addresses active (limits.max_tracked_ips = {}); retry later\n",
                limits.max_tracked_ips
            ),
        }
    }
}

/// One address's state.
#[derive(Debug, Default)]
struct Entry {
    open: u32,
    allowance: Allowance,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<NonZeroU64, Entry>,
    total: Allowance,
    last_sweep: Option<u64>,
}

/// The admission limits and what they count.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    per_ip_rate: Rate,
    total_rate: Rate,
    table: Mutex<Table>,
}

/// An admitted session's place under the per-address limit: give it back
/// with [`Admission::release`] when the session ends. 8 bytes, since every
/// session holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted(Option<NonZeroU64>);

impl Admitted {
    /// Not counted (an exempt address): nothing to give back.
    pub const EXEMPT: Admitted = Admitted(None);
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        let per_ip = limits.new_connections_per_ip_per_sec;
        let total = limits.new_connections_per_sec;
        Self {
            per_ip_rate: Rate::new(per_ip, per_ip),
            total_rate: Rate::new(total, total),
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Admits or refuses a new session from `client` now.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refusal> {
        self.admit_at(client, rate::now_ns())
    }

    /// [`Admission::admit`] at `now` (ns on [`rate::now_ns`]'s clock).
    pub fn admit_at(&self, client: IpAddr, now: u64) -> Result<Admitted, Refusal> {
        let client = client.to_canonical();
        if self
            .limits
            .exempt
            .iter()
            .any(|range| range.contains(client))
        {
            return Ok(Admitted::EXEMPT);
        }
        let key = counting_key(client);
        let mut guard = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let table = &mut *guard;
        if !table.entries.contains_key(&key) && table.entries.len() >= self.limits.max_tracked_ips {
            table.sweep(now);
            if table.entries.len() >= self.limits.max_tracked_ips {
                return Err(Refusal::TableFull);
            }
        }
        let entry = table.entries.entry(key).or_default();
        if entry.open >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        entry
            .allowance
            .check(&self.per_ip_rate, now)
            .map_err(|wait| Refusal::PerIpRate { wait })?;
        table
            .total
            .try_take(&self.total_rate, now)
            .map_err(|wait| Refusal::TotalRate { wait })?;
        // Checked above at the same instant, so this takes.
        let _ = entry.allowance.try_take(&self.per_ip_rate, now);
        entry.open += 1;
        Ok(Admitted(Some(key)))
    }

    /// Gives back an admitted session's place.
    pub fn release(&self, admitted: Admitted) {
        let Admitted(Some(key)) = admitted else {
            return;
        };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.entries.get_mut(&key) {
            entry.open = entry.open.saturating_sub(1);
        }
    }

    /// Addresses in the table now.
    pub fn tracked(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.entries.len()
    }
}

impl Table {
    /// Forgets addresses that hold nothing, at most once per [`SWEEP_EVERY`]
    /// (a sweep walks the whole table).
    fn sweep(&mut self, now: u64) {
        let every = SWEEP_EVERY.as_nanos() as u64;
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_sub(last) < every)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.entries
            .retain(|_, entry| entry.open > 0 || !entry.allowance.is_rested(now));
    }
}

/// Where IPv4 addresses go among the keys: the top 64 bits of an IPv6
/// multicast address (ff00::/8), which is never the source of a connection,
/// so no IPv6 client shares a key with an IPv4 one.
const V4_KEYS: u64 = 0xff00_0000_0000_0000;
/// The key of `::/64` (`::1` and the like), which would otherwise be 0.
const ZERO_PREFIX_KEY: u64 = 0xff00_0001_0000_0000;

/// What a client is counted under: an IPv4 address itself, an IPv6 one by
/// its /64 (the top 64 bits), as one non-zero `u64`.
fn counting_key(client: IpAddr) -> NonZeroU64 {
    let key = match client.to_canonical() {
        IpAddr::V4(v4) => V4_KEYS | u64::from(v4.to_bits()),
        IpAddr::V6(v6) => (v6.to_bits() >> 64) as u64,
    };
    NonZeroU64::new(key).unwrap_or(NonZeroU64::new(ZERO_PREFIX_KEY).expect("non-zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections_per_ip: 2,
            new_connections_per_ip_per_sec: 3,
            new_connections_per_sec: 100,
            max_tracked_ips: 4,
            exempt: Vec::new(),
            proxy: TrustedProxy::default(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sessions_per_address_are_capped_and_given_back() {
        let admission = Admission::new(limits());
        let a = ip("192.0.2.1");
        let first = admission.admit_at(a, SEC).unwrap();
        admission.admit_at(a, SEC).unwrap();
        assert_eq!(admission.admit_at(a, SEC), Err(Refusal::PerIp));
        // Another address is counted apart.
        admission.admit_at(ip("192.0.2.2"), SEC).unwrap();
        admission.release(first);
        assert!(admission.admit_at(a, SEC).is_ok());
    }

    #[test]
    fn new_sessions_per_address_follow_the_rate() {
        let admission = Admission::new(AdmissionLimits {
            max_connections_per_ip: 100,
            ..limits()
        });
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            let admitted = admission.admit_at(a, SEC).unwrap();
            admission.release(admitted);
        }
        let Err(Refusal::PerIpRate { wait }) = admission.admit_at(a, SEC) else {
            panic!("the fourth within a second is refused");
        };
        assert_eq!(wait, Duration::from_nanos(SEC / 3));
        assert!(admission.admit_at(a, SEC + SEC / 3).is_ok());
    }

    #[test]
    fn the_total_rate_covers_every_address() {
        let admission = Admission::new(AdmissionLimits {
            new_connections_per_sec: 2,
            ..limits()
        });
        admission.admit_at(ip("192.0.2.1"), SEC).unwrap();
        admission.admit_at(ip("192.0.2.2"), SEC).unwrap();
        assert!(matches!(
            admission.admit_at(ip("192.0.2.3"), SEC),
            Err(Refusal::TotalRate { .. })
        ));
        // A refusal by the total rate takes nothing from the address.
        assert!(admission.admit_at(ip("192.0.2.3"), SEC + SEC / 2).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_exempt_ranges_skip_the_limits() {
        let admission = Admission::new(AdmissionLimits {
            exempt: AddrRange::loopback(),
            ..limits()
        });
        admission.admit_at(ip("2001:db8:1:2::1"), SEC).unwrap();
        admission.admit_at(ip("2001:db8:1:2::ffff"), SEC).unwrap();
        assert_eq!(
            admission.admit_at(ip("2001:db8:1:2:abcd::9"), SEC),
            Err(Refusal::PerIp)
        );
        assert!(admission.admit_at(ip("2001:db8:1:3::1"), SEC).is_ok());
        for _ in 0..10 {
            assert_eq!(
                admission.admit_at(ip("127.0.0.1"), SEC),
                Ok(Admitted::EXEMPT)
            );
        }
    }

    #[test]
    fn a_full_table_sweeps_idle_addresses_and_refuses_while_all_are_active() {
        let admission = Admission::new(limits());
        let held: Vec<_> = (1..=4)
            .map(|i| {
                admission
                    .admit_at(ip(&format!("192.0.2.{i}")), SEC)
                    .unwrap()
            })
            .collect();
        assert_eq!(admission.tracked(), 4);
        // Every address has a session open: a fifth is refused.
        assert_eq!(
            admission.admit_at(ip("192.0.2.5"), 3 * SEC),
            Err(Refusal::TableFull)
        );
        // Known addresses are still served.
        assert!(admission.admit_at(ip("192.0.2.1"), 3 * SEC).is_ok());
        // Two close; once their allowance has refilled they are swept
        // (the last sweep was at 3 s, so the next may run a second later).
        admission.release(held[1]);
        admission.release(held[2]);
        assert_eq!(
            admission.admit_at(ip("192.0.2.5"), 3 * SEC + SEC / 2),
            Err(Refusal::TableFull),
            "at most one sweep per second"
        );
        assert!(admission.admit_at(ip("192.0.2.5"), 4 * SEC).is_ok());
        assert_eq!(admission.tracked(), 3);
    }

    #[test]
    fn keys_keep_ipv4_apart_from_ipv6() {
        let keys: std::collections::BTreeSet<_> = [
            "0.0.0.1",
            "255.255.255.255",
            "::1",
            "::2:1",
            "2001:db8::1",
            "fe80::1",
        ]
        .iter()
        .map(|a| counting_key(ip(a)))
        .collect();
        assert_eq!(keys.len(), 5, "::1 and ::2:1 share ::/64, the rest differ");
        assert_eq!(
            counting_key(ip("::ffff:192.0.2.1")),
            counting_key(ip("192.0.2.1"))
        );
        assert_eq!(std::mem::size_of::<Admitted>(), 8);
    }

    #[test]
    fn retry_after_rounds_up_and_spreads() {
        let mut rng = rand::thread_rng();
        let refusal = Refusal::TotalRate {
            wait: Duration::from_millis(2_100),
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let secs = refusal.retry_after_secs(&mut rng);
            assert!((3..=3 + RETRY_AFTER_SPREAD_SECS).contains(&secs), "{secs}");
            seen.insert(secs);
        }
        assert!(seen.len() > 1, "spread over several seconds");
        assert!(Refusal::PerIp.retry_after_secs(&mut rng) >= 1);
    }
}
