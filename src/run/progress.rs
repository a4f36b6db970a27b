//! Progress on stderr: a line per stage with its duration, and a spinner while a stage runs
//! when stderr is a terminal (quiet otherwise). Machine output never goes here. A server runs
//! jobs with a quiet progress that tells it each stage as it starts instead.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Told the label of each stage as it starts (`attempt 2/3 · test`).
pub type StageObserver = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Clone)]
pub struct Progress {
    terminal: bool,
    quiet: bool,
    observer: Option<StageObserver>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            quiet: false,
            observer: None,
        }
    }
}

/// A stage under way; [`StageTimer::done`] prints its line.
pub struct StageTimer {
    label: String,
    started: Instant,
    spinner: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// Prints nothing; tells `observer` each stage as it starts.
    pub fn observed(observer: StageObserver) -> Self {
        Progress {
            terminal: false,
            quiet: true,
            observer: Some(observer),
        }
    }

    pub fn line(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }

    pub fn start(&self, label: impl Into<String>) -> StageTimer {
        let label = label.into();
        if let Some(observer) = &self.observer {
            observer(&label);
        }
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
            quiet: self.quiet,
        }
    }
}

impl StageTimer {
    pub fn done(self, note: &str) -> Duration {
        let elapsed = self.started.elapsed();
        if let Some(bar) = self.spinner {
            bar.finish_and_clear();
        }
        if self.quiet {
            return elapsed;
        }
        eprintln!(
            "  {:<28} {:>7}  {note}",
            self.label,
            format!("{:.1}s", elapsed.as_secs_f64())
        );
        elapsed
    }
}
