//! `tickcast-loadgen`: flags -> Config, run, print the table, write the result files, exit
//! with the run's status (0 ok, 2 unannounced gap, 3 incomplete, 1 error).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use tickcast_loadgen::cli::Args;

// The loadgen allocates little per message, but connection setup and serde on rare messages
// do; mimalloc keeps that off the hot path's cache lines and matches the server's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let args = Args::parse();
    let out = args.out.clone();
    let no_files = args.no_files;
    let cfg = args.into_config(command_line);
    let label = cfg.label.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start the async runtime: {e}")),
    };
    let report = match runtime.block_on(tickcast_loadgen::run(cfg)) {
        Ok(report) => report,
        Err(e) => fail(&format!("{e:#}")),
    };
    println!("{}", report.table());
    if !no_files {
        let dir = out.unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from("results")
                .join("loadgen")
                .join(format!("{now}-{label}"))
        });
        match report.write_files(&dir) {
            Ok(files) => {
                for f in files {
                    println!("  wrote {}", f.display());
                }
            }
            Err(e) => fail(&format!("{e:#}")),
        }
    }
    // Connections are closed; do not wait for stray tasks (an aborted handshake, say).
    runtime.shutdown_background();
    std::process::exit(report.exit_code);
}

fn fail(message: &str) -> ! {
    eprintln!("tickcast-loadgen: {message}");
    std::process::exit(1);
}
