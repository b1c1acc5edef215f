//! The run's verdict against a real tickcast server: a run that measured
//! nothing must not pass.

mod common;

use std::time::Duration;

use common::start_tickcast;
use tickcast_loadgen::report::EXIT_NOTHING_DELIVERED;
use tickcast_loadgen::{run, Config};

/// A run whose clients subscribe to a channel no feed publishes to measured
/// nothing: it must fail and say so, not print "OK".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_receives_no_update_fails() {
    let (server, _feed) = start_tickcast().await;
    let mut cfg = Config::new(format!("ws://{}/ws", server.addr));
    cfg.clients = 3;
    cfg.mix.subscribe = vec!["nobody.publishes.here".into()];
    cfg.duration = Duration::from_millis(300);
    cfg.warmup = Duration::ZERO;
    cfg.close_timeout = Duration::from_secs(2);
    let report = run(cfg).await.expect("the run completes");
    assert_eq!(report.clients.subscribed, 3, "{}", report.table());
    assert_eq!(report.deliveries_all, 0);
    assert_eq!(
        report.exit_code,
        EXIT_NOTHING_DELIVERED,
        "{}",
        report.table()
    );
    assert!(report.verdict.contains("no update"), "{}", report.verdict);
    server.shutdown().await;
}
