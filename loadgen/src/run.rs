//! The run, phase by phase: prepare (fd limit, source addresses, feed connection), ramp the
//! clients at the connect rate, wait until they are subscribed, start the schedule and the
//! measurement window, drain, close every connection, and turn the counters into a [`Report`].
//! Every phase has a deadline, and the whole run has a hard one ([`Config::hard_deadline`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout};

use crate::client::{self, Notes, Shared, Stop};
use crate::config::Config;
use crate::mix::{self, Picker};
use crate::progress::Progress;
use crate::publisher::{self, Schedule};
use crate::report::{self, Report};
use crate::stalled;
use crate::stats::{Clock, Counters, LatencyFrom, Percentiles, Recorder, Window};
use crate::ws::Target;

/// Connections per source address before the run spreads over more 127.0.0.x addresses
/// (Linux's default ephemeral port range holds about 28k ports).
const CLIENTS_PER_SOURCE_IP: usize = 25_000;
const TICK: Duration = Duration::from_millis(100);

/// Runs the load described by `cfg` and returns its report (see [`Report::exit_code`]).
pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    cfg.validate()?;
    let hard = cfg.hard_deadline();
    match timeout(hard, run_phases(cfg)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "the run overran its hard deadline of {:.0} s (ramp + warm-up + duration + drain + \
             close + 5 s); the server may have stopped answering",
            hard.as_secs_f64()
        ),
    }
}

async fn run_phases(cfg: Config) -> anyhow::Result<Report> {
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut target = Target::parse(&cfg.url)?;
    target.deflate = cfg.deflate;
    let fd_limit = raise_fd_limit(cfg.clients + cfg.stalled)?;
    let sources = source_addresses(&cfg, &target)?;
    let published = mix::published_channels(&cfg.mix);
    let picker = Picker::new(&cfg.mix);
    let clock = Clock::new();
    let feed = match &cfg.publish {
        Some(p) => {
            let mut stream = publisher::connect(p.addr)?;
            publisher::prime(&mut stream, &published)?;
            Some(stream)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        target,
        clock,
        from: if cfg.publish.is_some() {
            LatencyFrom::Schedule
        } else {
            LatencyFrom::ServerTs
        },
        window: Window::unset(),
        recorder: Recorder::default(),
        counters: Counters::default(),
        fields: cfg.mix.fields.clone(),
        max_hz: cfg.mix.max_hz,
        connect_timeout: cfg.connect_timeout,
        close_timeout: cfg.close_timeout,
        max_reconnects: cfg.max_reconnects,
        ending: AtomicBool::new(false),
        subscribed: (0..cfg.clients).map(|_| AtomicBool::new(false)).collect(),
        notes: Mutex::new(Notes::default()),
    });
    let mut progress = Progress::new(cfg.progress, cfg.clients as u64);
    let c = &shared.counters;

    // Ramp: client i starts at i / connect_rate.
    let ramp_start = tokio::time::Instant::now();
    let mut stops = Vec::with_capacity(cfg.clients);
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(cfg.clients);
    let mut last_tick = Instant::now();
    for i in 0..cfg.clients {
        sleep_until(ramp_start + Duration::from_secs_f64(i as f64 / cfg.connect_rate)).await;
        let (tx, rx) = oneshot::channel();
        stops.push(tx);
        let channels = mix::client_channels(&cfg.mix, &picker, i);
        let source = sources.get(i % sources.len().max(1)).copied();
        tasks.push(tokio::spawn(client::run(
            shared.clone(),
            i,
            channels,
            source,
            Stop::new(rx),
        )));
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            progress.ramp(
                Counters::get(&c.connected),
                Counters::get(&c.subscribed),
                Counters::get(&c.connect_failed),
            );
            nobody_connects(&shared, i + 1)?;
        }
    }
    // Wait until every client is subscribed or has given up.
    let settle_by = Instant::now() + cfg.connect_timeout + Duration::from_secs(2);
    loop {
        let settled = Counters::get(&c.settled);
        let failed = Counters::get(&c.subscribe_failed) + Counters::get(&c.connect_failed);
        let sub = Counters::get(&c.subscribed);
        progress.ramp(Counters::get(&c.connected), sub, failed);
        nobody_connects(&shared, cfg.clients)?;
        if settled >= cfg.clients as u64 {
            break;
        }
        if Instant::now() >= settle_by {
            progress.phase(&format!(
                "only {sub} of {} clients subscribed after {:.0} s; measuring those",
                cfg.clients,
                cfg.connect_timeout.as_secs_f64() + 2.0
            ));
            break;
        }
        sleep(TICK).await;
    }
    nobody_connects(&shared, cfg.clients)?;
    let ramp_took = ramp_start.elapsed();
    progress.phase(&format!(
        "{} clients subscribed in {:.2} s; warm-up {:.1} s, then measuring {:.1} s",
        Counters::get(&c.subscribed),
        ramp_took.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64()
    ));

    // The stalled connections, once the normal clients are in: they subscribe like clients
    // 0, 1, ... and then never read.
    let stalled_set = open_stalled(&cfg, &shared, &picker, &sources).await;
    if cfg.stalled > 0 {
        progress.phase(&format!(
            "{} of {} stalled connections subscribed (they read no further)",
            Counters::get(&stalled_set.tally.subscribed),
            cfg.stalled
        ));
    }

    // The schedule and the window.
    let schedule_start = clock.now_ns() + 20_000_000;
    let window_start = schedule_start + cfg.warmup.as_nanos() as u64;
    let window_end = window_start + cfg.duration.as_nanos() as u64;
    shared.window.set(window_start, window_end);
    let publisher_stop = Arc::new(AtomicBool::new(false));
    let publisher = match (feed, &cfg.publish) {
        (Some(stream), Some(p)) => {
            let schedule = Schedule::new(schedule_start, p.rate, cfg.warmup + cfg.duration);
            let handle = publisher::spawn(
                stream,
                schedule,
                published.clone(),
                clock,
                publisher_stop.clone(),
            );
            Some(handle)
        }
        _ => None,
    };
    let total_ms = (window_end - schedule_start) / 1_000_000;
    let (mut last_deliveries, mut last_at) = (0u64, Instant::now());
    let end_at = clock.instant_at(window_end);
    // Ctrl-C ends the window early; the run still drains, closes and reports.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut window_end = window_end;
    let mut interrupted = false;
    while Instant::now() < end_at {
        tokio::select! {
            _ = sleep(TICK.min(end_at.saturating_duration_since(Instant::now()))) => {}
            _ = &mut ctrl_c => {
                interrupted = true;
                window_end = clock.now_ns().max(window_start);
                shared.window.set(window_start, window_end);
                progress.phase("interrupted: ending the window now");
                break;
            }
        }
        if last_at.elapsed() >= Duration::from_millis(500) {
            let tally = shared.recorder.merged();
            let rate =
                (tally.deliveries - last_deliveries) as f64 / last_at.elapsed().as_secs_f64();
            (last_deliveries, last_at) = (tally.deliveries, Instant::now());
            let p99 = Percentiles::of(&tally.corrected).p99;
            let elapsed_ms =
                (clock.now_ns().saturating_sub(schedule_start) / 1_000_000).min(total_ms);
            progress.running(
                elapsed_ms,
                total_ms,
                format!(
                    "clients {}  deliveries/s {rate:.0}  p99 {p99:.0} us  gaps {}  disconnects {}",
                    Counters::get(&c.subscribed),
                    Counters::get(&c.gaps),
                    Counters::get(&c.disconnects)
                ),
            );
        }
    }

    // Stop the publisher, then let in-flight deliveries arrive.
    publisher_stop.store(true, Relaxed);
    let window_s = (window_end - window_start) as f64 / 1e9;
    let published_outcome = match publisher {
        Some(handle) => Some(
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .context("joining the publisher")?
                .map_err(|_| anyhow::anyhow!("the publisher thread panicked"))?,
        ),
        None => None,
    };
    if let Some(p) = &published_outcome {
        // Every client counted as subscribed here; those that were not just make the drain
        // end on its no-progress rule instead.
        let upper_bound = expected_deliveries(&cfg, &picker, &published, &p.sent, |_| true);
        drain(&shared, upper_bound, cfg.drain).await;
    }

    // Close every connection with 1000 and wait, bounded, for the tasks to end.
    progress.phase("closing connections");
    shared.ending.store(true, Relaxed);
    for tx in stops.into_iter().chain(stalled_set.stops) {
        let _ = tx.send(());
    }
    let close_by = tokio::time::Instant::now() + cfg.close_timeout + Duration::from_secs(1);
    let mut unfinished = 0;
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(close_by, task).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => unfinished += 1,
            Err(_) => {
                abort.abort();
                unfinished += 1;
            }
        }
    }
    // Whether each client subscribed, also for those cut off above: their
    // deliveries are counted as received, so they count as expected too.
    let subscribed: Vec<bool> = shared.subscribed.iter().map(|f| f.load(Relaxed)).collect();
    let stalled = if cfg.stalled > 0 {
        Some(finish_stalled(&cfg, stalled_set.tasks, &stalled_set.tally, close_by).await)
    } else {
        None
    };
    progress.finish();

    // Figures.
    let tally = shared.recorder.merged();
    let notes = std::mem::take(&mut *shared.notes.lock().unwrap_or_else(|e| e.into_inner()));
    let publisher = published_outcome.map(|p| {
        let expected = expected_deliveries(&cfg, &picker, &published, &p.sent, |i| subscribed[i]);
        let received = tally.published;
        report::Publisher {
            rate: cfg.publish.as_ref().map_or(0.0, |p| p.rate),
            channels: published.len(),
            sent: p.total,
            lag_us: Percentiles::of(&p.lag),
            expected_deliveries: expected,
            received_deliveries: received,
            missing: expected.saturating_sub(received),
            delivered_pct: if expected == 0 {
                100.0
            } else {
                100.0 * received as f64 / expected as f64
            },
            coalescing_possible: cfg.mix.max_hz.is_some() || !cfg.mix.fields.is_empty(),
            error: p.error,
        }
    });
    let uncorrected = (shared.from == LatencyFrom::Schedule).then(|| tally.uncorrected.clone());
    let mut report = Report {
        label: cfg.label.clone(),
        command_line: cfg.command_line.clone(),
        loadgen_version: env!("CARGO_PKG_VERSION"),
        started_unix_s,
        url: cfg.url.clone(),
        server_header: notes.server_header.clone(),
        machine: report::Machine {
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        clients: report::Clients {
            requested: cfg.clients,
            connected: Counters::get(&c.connected),
            subscribed: Counters::get(&c.subscribed),
            connect_failed: Counters::get(&c.connect_failed),
            subscribe_failed: Counters::get(&c.subscribe_failed),
            connect_errors: notes.connect_errors.clone(),
            source_ips: sources.len().max(1) as u8,
            fd_limit,
        },
        connect_us: Percentiles::of(&notes.connect_ns),
        subscribe_us: Percentiles::of(&notes.subscribe_ns),
        window_s,
        deliveries: tally.window_deliveries,
        deliveries_per_s: per_second(tally.window_deliveries, window_s),
        bytes: tally.window_bytes,
        bytes_per_s: per_second(tally.window_bytes, window_s),
        deliveries_all: tally.deliveries,
        latency: report::Latency {
            from: shared.from,
            unit: "us",
            corrected: Percentiles::of(&tally.corrected),
            uncorrected: uncorrected.as_ref().map(Percentiles::of),
            unstamped: tally.unstamped,
            negative: tally.negative,
        },
        chains: report::Chains {
            gaps: Counters::get(&c.gaps),
            snapshots: Counters::get(&c.snapshots),
            resyncs: Counters::get(&c.resyncs),
            chains_from_update: Counters::get(&c.chains_from_update),
            disconnects: Counters::get(&c.disconnects),
            slow_consumer_closes: Counters::get(&c.slow_consumer_closes),
            reconnects: Counters::get(&c.reconnects),
            server_errors: Counters::get(&c.server_errors),
            malformed: Counters::get(&c.malformed),
            gap_examples: notes.gap_examples.clone(),
        },
        publisher,
        stalled,
        close: report::Close {
            clean: Counters::get(&c.closed_clean),
            timed_out: Counters::get(&c.close_timeouts),
            unfinished,
        },
        error_samples: notes.error_samples.clone(),
        interrupted,
        exit_code: 0,
        verdict: String::new(),
        corrected: tally.corrected.clone(),
        uncorrected,
        config: cfg,
    };
    report.judge();
    Ok(report)
}

/// The `--stalled` connections while they run.
struct StalledSet {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<stalled::Outcome>>,
    tally: Arc<stalled::Tally>,
}

/// Opens `cfg.stalled` connections and waits (bounded by the connect timeout plus a second)
/// until each has subscribed or given up.
async fn open_stalled(
    cfg: &Config,
    shared: &Arc<Shared>,
    picker: &Picker,
    sources: &[IpAddr],
) -> StalledSet {
    let mut set = StalledSet {
        stops: Vec::with_capacity(cfg.stalled),
        tasks: Vec::with_capacity(cfg.stalled),
        tally: Arc::new(stalled::Tally::default()),
    };
    for j in 0..cfg.stalled {
        let (tx, rx) = oneshot::channel();
        set.stops.push(tx);
        let source = sources
            .get((cfg.clients + j) % sources.len().max(1))
            .copied();
        set.tasks.push(tokio::spawn(stalled::run(
            shared.clone(),
            set.tally.clone(),
            j,
            mix::client_channels(&cfg.mix, picker, j % cfg.clients),
            source,
            crate::ws::SocketOpts {
                recv_buffer: cfg.stalled_recv_buffer,
                max_segment: cfg.stalled_max_segment,
            },
            Stop::new(rx),
        )));
    }
    let until = Instant::now() + cfg.connect_timeout + Duration::from_secs(1);
    while Counters::get(&set.tally.settled) < cfg.stalled as u64 && Instant::now() < until {
        sleep(Duration::from_millis(10)).await;
    }
    set
}

/// Waits (until `close_by`) for the stalled connections' reports, then sums them up. A task
/// still draining at `close_by` is aborted and counted as a drain timeout.
async fn finish_stalled(
    cfg: &Config,
    tasks: Vec<JoinHandle<stalled::Outcome>>,
    tally: &stalled::Tally,
    close_by: tokio::time::Instant,
) -> report::Stalled {
    let mut s = report::Stalled {
        requested: cfg.stalled,
        subscribed: Counters::get(&tally.subscribed),
        recv_buffer_requested: cfg.stalled_recv_buffer,
        max_segment_requested: cfg.stalled_max_segment,
        ..Default::default()
    };
    for task in tasks {
        let abort = task.abort_handle();
        let o = match tokio::time::timeout_at(close_by, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                s.drain_timeouts += 1;
                continue;
            }
        };
        s.recv_buffer_granted = s.recv_buffer_granted.or(o.recv_buffer);
        s.drained_bytes += o.drained_bytes;
        match o.end {
            stalled::End::NotSubscribed => {}
            stalled::End::Answered => s.kept_open += 1,
            stalled::End::ClosedByServer(code) => {
                *s.closed_by_server.entry(code).or_default() += 1;
                if code == 1013 {
                    s.slow_consumer_closes += 1;
                }
            }
            stalled::End::Dropped => s.dropped += 1,
            stalled::End::TimedOut => s.drain_timeouts += 1,
        }
    }
    s
}

fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// Fails the run early when every connection attempt so far was refused or failed.
fn nobody_connects(shared: &Shared, attempted: usize) -> anyhow::Result<()> {
    let c = &shared.counters;
    let failed = Counters::get(&c.connect_failed);
    if Counters::get(&c.connected) > 0 || failed < attempted.min(20) as u64 {
        return Ok(());
    }
    let notes = shared.notes.lock().unwrap_or_else(|e| e.into_inner());
    let url = &shared.target.url;
    if notes.connect_errors.contains_key("refused") {
        bail!(
            "connection refused at {url}: is the server running? Start it with `tickcast serve` \
             (or the uWS peer with `node uws.js --ws {}`)",
            shared.target.authority
        );
    }
    let first = notes.error_samples.first().cloned().unwrap_or_default();
    bail!("none of the first {failed} connections to {url} succeeded; the first error: {first}")
}

/// Records sent on the channels each subscribed client covers, summed over clients.
fn expected_deliveries(
    cfg: &Config,
    picker: &Picker,
    published: &[String],
    sent: &[u64],
    subscribed: impl Fn(usize) -> bool,
) -> u64 {
    let index: HashMap<&str, usize> = published
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut pattern_cache: HashMap<String, Vec<usize>> = HashMap::new();
    let mut total = 0;
    let mut covered = Vec::new();
    for i in (0..cfg.clients).filter(|&i| subscribed(i)) {
        covered.clear();
        for sub in mix::client_channels(&cfg.mix, picker, i) {
            match index.get(sub.as_str()) {
                Some(&ix) => covered.push(ix),
                None => covered.extend(
                    pattern_cache
                        .entry(sub.clone())
                        .or_insert_with(|| mix::covered(std::slice::from_ref(&sub), published))
                        .iter(),
                ),
            }
        }
        covered.sort_unstable();
        covered.dedup();
        total += covered.iter().map(|&ix| sent[ix]).sum::<u64>();
    }
    total
}

/// Waits until `expected` publisher records have been delivered, or until nothing arrives for
/// half a second, or `limit` passes.
async fn drain(shared: &Shared, expected: u64, limit: Duration) {
    let until = Instant::now() + limit;
    let (mut seen, mut since) = (shared.recorder.merged().published, Instant::now());
    while Instant::now() < until {
        let now_seen = shared.recorder.merged().published;
        if now_seen >= expected {
            return;
        }
        if now_seen != seen {
            (seen, since) = (now_seen, Instant::now());
        } else if since.elapsed() >= Duration::from_millis(500) {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Raises the soft fd limit to cover every client (plus some spare); returns the new limit.
fn raise_fd_limit(clients: usize) -> anyhow::Result<u64> {
    let want = clients as u64 + 256;
    let mut got =
        rlimit::increase_nofile_limit(want).context("raising the file-descriptor limit")?;
    if got < want && rlimit::setrlimit(rlimit::Resource::NOFILE, want, want).is_ok() {
        // Root (CAP_SYS_RESOURCE) may raise the hard limit too, up to fs.nr_open.
        got = want;
    }
    if got < want {
        bail!(
            "{clients} clients need about {want} file descriptors but the hard limit is {got}: \
             raise it (`ulimit -Hn {want}` as root, or LimitNOFILE= in a systemd unit), or run \
             fewer --clients"
        );
    }
    Ok(got)
}

/// The source address of each client, cycled: empty when the kernel may choose.
fn source_addresses(cfg: &Config, target: &Target) -> anyhow::Result<Vec<IpAddr>> {
    let n = match cfg.source_ips {
        0 => cfg.clients.div_ceil(CLIENTS_PER_SOURCE_IP),
        n => usize::from(n),
    };
    if n <= 1 {
        return Ok(Vec::new());
    }
    if n > 254 {
        bail!(
            "{} clients would need {n} source addresses; at most 254 (127.0.0.1-254)",
            cfg.clients
        );
    }
    if !target.addr.ip().is_loopback() || !target.addr.is_ipv4() {
        bail!(
            "spreading over {n} source addresses needs an IPv4 loopback target (127.0.0.x), not \
             {}; lower --clients or set --source-ips 1",
            target.addr
        );
    }
    Ok((1..=n as u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}
