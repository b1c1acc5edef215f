//! The gap detector against real sockets: a server that skips a seq must fail the run; the same
//! server without the skip must pass. Runs are short and bounded by the loadgen's own deadlines.

mod common;

use std::time::Duration;

use common::{start_ticker, Script};
use tickcast_loadgen::report::EXIT_GAP;
use tickcast_loadgen::{run, Config, Report};

fn config(url: &str, clients: usize) -> Config {
    let mut cfg = Config::new(url);
    cfg.clients = clients;
    cfg.mix.subscribe = vec!["test.A".into(), "test.B".into()];
    cfg.duration = Duration::from_millis(300);
    cfg.warmup = Duration::ZERO;
    cfg.close_timeout = Duration::from_secs(2);
    cfg
}

async fn run_against(script: Script, clients: usize) -> Report {
    let server = start_ticker(script).await;
    run(config(&server.url, clients))
        .await
        .expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_seq_is_caught_and_fails_the_run() {
    let report = run_against(
        Script {
            skip_seq: Some(5),
            ..Script::default()
        },
        4,
    )
    .await;
    // Every client sees the skip once on each of its two channels.
    assert_eq!(report.chains.gaps, 8, "{}", report.table());
    assert_eq!(report.exit_code, EXIT_GAP);
    let gap = &report.chains.gap_examples[0];
    assert_eq!((gap.held_seq, gap.prev, gap.seq), (4, 5, 6));
    assert_eq!(
        report.chains.chains_from_update, 8,
        "no snapshots: chains start at updates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_without_the_skip_passes() {
    let report = run_against(Script::default(), 4).await;
    assert_eq!(report.chains.gaps, 0, "{}", report.table());
    assert_eq!(report.exit_code, 0, "{}", report.table());
    assert_eq!(report.clients.subscribed, 4);
    assert!(
        report.deliveries > 0 && report.latency.corrected.count > 0,
        "{}",
        report.table()
    );
    assert_eq!(
        report.close.clean, 4,
        "every connection closed with a handshake"
    );
    assert_eq!(report.chains.malformed + report.chains.disconnects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_start_at_snapshots_and_a_skip_after_one_is_caught() {
    let report = run_against(
        Script {
            snapshot_seq: Some(100),
            ..Script::default()
        },
        2,
    )
    .await;
    assert_eq!(
        (report.chains.gaps, report.chains.snapshots),
        (0, 4),
        "{}",
        report.table()
    );
    assert_eq!(report.chains.chains_from_update, 0);
    let script = Script {
        snapshot_seq: Some(100),
        skip_seq: Some(103),
        ..Script::default()
    };
    let report = run_against(script, 2).await;
    assert_eq!(report.chains.gaps, 4, "{}", report.table());
    assert_eq!(report.exit_code, EXIT_GAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1013_close_is_resumed_with_since_and_the_resync_is_no_gap() {
    let script = Script {
        snapshot_seq: Some(1),
        close_1013_after: Some(4),
        ..Script::default()
    };
    let server = start_ticker(script).await;
    let mut cfg = config(&server.url, 2);
    cfg.mix.subscribe = vec!["test.A".into()];
    let report = run(cfg).await.unwrap();
    let ch = &report.chains;
    assert_eq!(
        (ch.slow_consumer_closes, ch.reconnects, ch.resyncs),
        (2, 2, 2),
        "{}",
        report.table()
    );
    assert_eq!(ch.gaps, 0, "{}", report.table());
    assert_eq!(report.exit_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_says_what_to_do() {
    // A port that is bound (so no other test can take it) but not listening: connects to it
    // are refused.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let text = match run(config(&format!("ws://127.0.0.1:{port}/ws"), 3)).await {
        Ok(report) => panic!("the run should fail:\n{}", report.table()),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        text.contains("connection refused") && text.contains("is the server running"),
        "{text}"
    );
}
