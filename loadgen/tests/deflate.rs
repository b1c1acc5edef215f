//! `--deflate` against a real tickcast server: the clients offer
//! permessage-deflate, the server agrees and sends the updates compressed,
//! and the loadgen inflates every one: all records arrive, in order.

mod common;

use common::{publisher_config, start_tickcast};
use tickcast_loadgen::{inflate, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_updates_are_inflated_and_every_one_arrives() {
    let (server, feed) = start_tickcast().await;
    let url = format!("ws://{}/ws", server.addr);
    let mut cfg = publisher_config(&url, feed, (4, 1, 1), "defl.c", 1000.0);
    cfg.deflate = true;
    let before = inflate::inflated_frames();
    let report = run(cfg).await.expect("the run completes");
    let table = report.table();
    assert_eq!(report.clients.subscribed, 4, "{table}");
    let p = report.publisher.as_ref().expect("publisher figures");
    assert_eq!(p.sent, 600, "{table}");
    assert_eq!((p.received_deliveries, p.missing), (4 * 600, 0), "{table}");
    assert_eq!(report.chains.gaps, 0, "{table}");
    assert_eq!(report.exit_code, 0, "{table}");
    // Every update (about 170 bytes of JSON) came compressed.
    let inflated = inflate::inflated_frames() - before;
    assert!(inflated >= 4 * 600, "{inflated} frames inflated: {table}");
    server.shutdown().await;
}
