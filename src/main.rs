//! The `tickcast` command: flags -> settings, logging, bind, serve until
//! Ctrl-C or SIGTERM (then stop as `tickcast::shutdown` describes; a
//! second signal exits at once).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use tickcast::config::{self, Cli, CliCommand};

// `--features system-alloc` leaves malloc in place so a heap profiler sees
// every allocation (scripts/memory-profile.sh).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = match Cli::parse().into_command() {
        CliCommand::DefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            return ExitCode::SUCCESS;
        }
        CliCommand::Serve(args) => args,
    };
    let settings = match config::settings_from_args(&args) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("tickcast: {e}");
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&settings.log));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // Every connection holds a descriptor: use all the hard limit allows.
    match tickcast::http::accept::raise_fd_limit() {
        Ok(limit) => tracing::info!("file descriptor limit: {limit}"),
        Err(e) => tracing::warn!("cannot raise the file descriptor limit: {e}"),
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tickcast: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(settings));
    // The server has stopped, or given up on sessions still going after
    // limits.shutdown_timeout_ms: drop whatever is left without waiting
    // (a blocking read of a feed file, a client that never read).
    runtime.shutdown_timeout(Duration::ZERO);
    code
}

async fn serve(settings: config::Settings) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "tickcast: cannot listen on {}: {e} (is another server running? choose another with --listen 127.0.0.1:PORT)",
                settings.listen
            );
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let feeds: Vec<String> = match &settings.nats {
        Some(nats) if nats.role == tickcast::nats::Role::Edge => {
            vec![format!("the NATS stream {} at {}", nats.stream, nats.url)]
        }
        _ => settings.feeds.iter().map(|f| f.to_string()).collect(),
    };
    let shutdown_timeout = Duration::from_millis(settings.limits.shutdown_timeout_ms);
    let server = match tickcast::start(listener, settings, shutdown.clone()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tickcast: {e}");
            return ExitCode::from(2);
        }
    };
    let (http, ws) = match &server.state.tls {
        Some(_) => ("https", "wss"),
        None => ("http", "ws"),
    };
    println!("tickcast is serving {} ", feeds.join(", "));
    println!("  open   {http}://{}/  in a browser", server.addr);
    println!("  socket {ws}://{}/ws", server.addr);
    println!("  Ctrl-C to stop");
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(server.state.tls.clone()));
    tokio::spawn(async move {
        tickcast::shutdown::signal().await;
        tracing::info!(
            "shutting down: no new connections; clients get what is queued, then close 1001 \
             with a reconnect delay; exiting within {shutdown_timeout:?} (a second signal exits now)"
        );
        shutdown.cancel();
        tickcast::shutdown::signal().await;
        eprintln!("tickcast: second signal, exiting now");
        std::process::exit(130);
    });
    server.wait().await;
    ExitCode::SUCCESS
}

/// SIGHUP reads the TLS certificate and key again (`tickcast::tls`): new
/// handshakes get the new pair; a pair that cannot be used is logged and
/// the one in force kept. Without TLS there is nothing to reload (and the
/// signal no longer ends the process).
#[cfg(unix)]
async fn reload_on_hangup(tls: Option<std::sync::Arc<tickcast::tls::Tls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP, so no certificate reloads: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
            continue;
        };
        let cert = tls.files().cert.display();
        match tls.reload().await {
            Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate {cert}"),
            Err(e) => tracing::error!("SIGHUP: keeping the TLS certificate in force: {e}"),
        }
    }
}
