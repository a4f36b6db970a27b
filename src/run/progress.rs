//! Progress on stderr: a line per stage with its duration, and a spinner while a stage runs
//! when stderr is a terminal (quiet otherwise). Machine output never goes here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy)]
pub struct Progress {
    terminal: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

/// A stage under way; [`StageTimer::done`] prints its line.
pub struct StageTimer {
    label: String,
    started: Instant,
    spinner: Option<ProgressBar>,
}

impl Progress {
    pub fn line(&self, message: &str) {
        eprintln!("{message}");
    }

    pub fn start(&self, label: impl Into<String>) -> StageTimer {
        let label = label.into();
        let spinner = self.terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                    .expect("template is valid"),
            );
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        StageTimer {
            label,
            started: Instant::now(),
            spinner,
        }
    }
}

impl StageTimer {
    pub fn done(self, note: &str) -> Duration {
        let elapsed = self.started.elapsed();
        if let Some(bar) = self.spinner {
            bar.finish_and_clear();
        }
        eprintln!(
            "  {:<28} {:>7}  {note}",
            self.label,
            format!("{:.1}s", elapsed.as_secs_f64())
        );
        elapsed
    }
}
