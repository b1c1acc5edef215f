//! Publisher mode end to end: the loadgen feeds a hub's TCP ingest on a schedule and checks
//! that every subscriber got every record on its channels, with CO-corrected latency.

mod common;

use std::time::Duration;

use common::{publisher_config, start_hub};
use tickcast_loadgen::report::EXIT_GAP;
use tickcast_loadgen::stats::LatencyFrom;
use tickcast_loadgen::{run, Report};

async fn publish_run(drop_seq: Option<u64>) -> Report {
    let hub = start_hub(drop_seq).await;
    let mut cfg = publisher_config(&hub.url, hub.ingest.unwrap(), (6, 4, 2), "q.", 2000.0);
    cfg.close_timeout = Duration::from_secs(2);
    run(cfg).await.expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scheduled_record_reaches_every_subscriber() {
    let report = publish_run(None).await;
    let p = report.publisher.as_ref().expect("publisher figures");
    // 2000/s over 600 ms: 1200 records, 300 per channel, each client on 2 channels.
    assert_eq!(p.sent, 1200, "{}", report.table());
    assert_eq!(p.expected_deliveries, 6 * 2 * 300);
    assert_eq!(
        (p.received_deliveries, p.missing),
        (p.expected_deliveries, 0),
        "{}",
        report.table()
    );
    assert_eq!(report.chains.gaps, 0);
    assert_eq!(report.exit_code, 0, "{}", report.table());
    assert_eq!(report.latency.from, LatencyFrom::Schedule);
    // Only records scheduled in the 500 ms window count toward latency: 1000 of the 1200.
    assert_eq!(
        report.latency.corrected.count,
        6 * 2 * 250,
        "{}",
        report.table()
    );
    let uncorrected = report
        .latency
        .uncorrected
        .as_ref()
        .expect("uncorrected figures");
    assert_eq!(uncorrected.count, report.latency.corrected.count);
    assert!(report.latency.corrected.max >= uncorrected.max * 0.99 || uncorrected.max < 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_dropped_by_the_server_is_a_gap_and_missing() {
    let report = publish_run(Some(10)).await;
    let p = report.publisher.as_ref().unwrap();
    assert_eq!(
        p.missing,
        6 * 2,
        "one record per channel lost for each subscriber: {}",
        report.table()
    );
    assert_eq!(report.chains.gaps, 6 * 2, "{}", report.table());
    assert_eq!(report.exit_code, EXIT_GAP);
}
