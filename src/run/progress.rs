//! Progress on stderr: a line per step with its duration, and a spinner while a step runs when
//! stderr is a terminal (quiet otherwise). Machine output never goes here. A server runs jobs
//! with a quiet progress that tells it each step, typed, as it starts instead.

use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::model::{Phase, Stage};

/// What a job is doing: what the progress line says, and what `kiln serve` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Cloning the repository and resolving the base.
    Workspace,
    /// A stage of attempt `n` of `of`.
    Attempt {
        n: u32,
        of: u32,
        stage: Stage,
    },
    PolicyGate,
    Publish,
    /// The merge queue's turn on `target`.
    MergeQueue {
        target: String,
    },
    /// Anything else kiln times (an image build).
    Other(String),
}

impl Step {
    /// The attempt this step belongs to (0 before and after the attempts).
    pub fn attempt(&self) -> u32 {
        match self {
            Step::Attempt { n, .. } => *n,
            _ => 0,
        }
    }

    /// What the job is doing, as `kiln serve` records it; `None` for what is not a job's step.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Step::Workspace => Some(Phase::Workspace),
            Step::Attempt { stage, .. } => Some(Phase::Stage(*stage)),
            Step::PolicyGate => Some(Phase::PolicyGate),
            Step::Publish => Some(Phase::Publish),
            Step::MergeQueue { .. } => Some(Phase::MergeQueue),
            Step::Other(_) => None,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Workspace => f.write_str("workspace"),
            Step::Attempt { n, of, stage } => write!(f, "attempt {n}/{of} · {stage}"),
            Step::PolicyGate => f.write_str("policy gate"),
            Step::Publish => f.write_str("publish"),
            Step::MergeQueue { target } => write!(f, "merge queue · {target}"),
            Step::Other(label) => f.write_str(label),
        }
    }
}

/// Told each step as it starts.
pub type StageObserver = Arc<dyn Fn(&Step) + Send + Sync>;

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

    pub fn start(&self, step: Step) -> StageTimer {
        if let Some(observer) = &self.observer {
            observer(&step);
        }
        let label = step.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_as_the_progress_line_and_keep_their_attempt() {
        let step = Step::Attempt {
            n: 2,
            of: 3,
            stage: Stage::Test,
        };
        assert_eq!(step.to_string(), "attempt 2/3 · test");
        assert_eq!(step.attempt(), 2);
        assert_eq!(step.phase(), Some(Phase::Stage(Stage::Test)));
        assert_eq!(Step::Workspace.attempt(), 0);
        assert_eq!(Step::Other("image busybox".into()).phase(), None);
    }
}
