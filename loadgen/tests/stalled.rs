//! `--stalled` against a real tickcast server (started in-process with a TCP feed): a
//! subscriber that stops reading must not cost the normal clients a delivery or a gap, and must
//! not be counted among them.

mod common;

use std::time::Duration;

use common::{publisher_config, start_tickcast};
use tickcast_loadgen::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_the_others_nothing_and_is_not_counted() {
    let (server, feed) = start_tickcast().await;
    let url = format!("ws://{}/ws", server.addr);
    let mut cfg = publisher_config(&url, feed, (4, 1, 1), "stall.c", 1000.0);
    cfg.stalled = 1;
    cfg.close_timeout = Duration::from_secs(3);
    let report = run(cfg).await.expect("the run completes");
    let table = report.table();

    // The normal clients: all four subscribed, every record delivered to each, no gaps.
    assert_eq!(report.clients.requested, 4, "{table}");
    assert_eq!(report.clients.subscribed, 4, "{table}");
    let p = report.publisher.as_ref().expect("publisher figures");
    // 1000/s over 600 ms on one channel.
    assert_eq!(p.sent, 600, "{table}");
    assert_eq!(p.expected_deliveries, 4 * 600, "only the 4 normal clients");
    assert_eq!((p.received_deliveries, p.missing), (4 * 600, 0), "{table}");
    assert_eq!(report.chains.gaps, 0, "{table}");
    assert_eq!(report.chains.disconnects, 0, "{table}");
    // Latency counts the 500 records due in the window, for the 4 normal clients only.
    assert_eq!(report.latency.corrected.count, 4 * 500, "{table}");
    assert_eq!(report.exit_code, 0, "{table}");

    // The stalled one: subscribed, never read, and what it left unread was there at the end.
    let s = report.stalled.as_ref().expect("stalled figures");
    assert_eq!((s.requested, s.subscribed), (1, 1), "{table}");
    assert_eq!(
        s.kept_open + s.dropped + s.drain_timeouts + s.closed_by_server.values().sum::<u64>(),
        1,
        "{table}"
    );
    assert!(
        s.drained_bytes > 0,
        "updates should have piled up unread: {table}"
    );
    server.shutdown().await;
}
