//! The live status line: an indicatif bar on a terminal, a plain line every few seconds when
//! stderr is a file or a pipe, nothing at all when disabled (tests).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Progress {
    Off,
    Plain { last: Instant },
    Bar(ProgressBar),
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(enabled: bool, clients: u64) -> Progress {
        if !enabled {
            return Progress::Off;
        }
        if !std::io::stderr().is_terminal() {
            return Progress::Plain {
                last: Instant::now(),
            };
        }
        let bar =
            ProgressBar::with_draw_target(Some(clients), ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix("connecting");
        Progress::Bar(bar)
    }

    /// A phase change, printed above the bar (or as a plain line).
    pub fn phase(&mut self, text: &str) {
        match self {
            Progress::Off => {}
            Progress::Plain { .. } => eprintln!("loadgen: {text}"),
            Progress::Bar(bar) => bar.println(format!("loadgen: {text}")),
        }
    }

    /// During the ramp: position = clients subscribed.
    pub fn ramp(&mut self, connected: u64, subscribed: u64, failed: u64) {
        let msg = format!("connected {connected}, subscribed {subscribed}, failed {failed}");
        self.update("connecting", subscribed, None, msg);
    }

    /// During the window: position = elapsed ms of `total_ms`.
    pub fn running(&mut self, elapsed_ms: u64, total_ms: u64, msg: String) {
        self.update("measuring", elapsed_ms, Some(total_ms), msg);
    }

    fn update(&mut self, prefix: &'static str, pos: u64, len: Option<u64>, msg: String) {
        match self {
            Progress::Off => {}
            Progress::Plain { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("loadgen: {prefix}: {msg}");
                }
            }
            Progress::Bar(bar) => {
                if let Some(len) = len {
                    bar.set_length(len);
                }
                bar.set_prefix(prefix);
                bar.set_position(pos);
                bar.set_message(msg);
            }
        }
    }

    pub fn finish(&mut self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
