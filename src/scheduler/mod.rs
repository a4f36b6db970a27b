//! Scheduling: which queued jobs start now. Priority with aging (a job that waits grows more
//! urgent, so none starves), a global concurrency limit and one per repository, and overlap
//! avoidance: a job never starts while a running job on the same repository may touch the same
//! files (the seed article's file-level scheduling against merge conflicts).
//!
//! Pure logic over plain values: the server feeds it the queue and what runs, and starts what it
//! picks.

use std::time::Duration;

/// A job waiting to run.
#[derive(Clone, Debug)]
pub struct Queued {
    pub id: String,
    /// Lower runs sooner, as in P0, P1, P2 (the seed article's record has `"priority": 2`).
    pub priority: i64,
    /// How long it has waited.
    pub waited: Duration,
    /// The repository it changes (a canonical path or URL).
    pub repo: String,
    pub touches: Touches,
}

/// A job that runs now.
#[derive(Clone, Debug)]
pub struct Running {
    pub repo: String,
    pub touches: Touches,
}

/// The limits: `global` is one server's, the others hold across every server sharing a queue.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Jobs running at once on this server, across repositories.
    pub global: usize,
    /// Jobs running at once on one repository, on all servers together.
    pub per_repo: usize,
    /// Each full `aging` a job waits makes it one priority level more urgent.
    pub aging: Duration,
}

/// The paths a job may change, as globs (`src/auth/**`, `*.sh`), or everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touches(Vec<String>);

impl Touches {
    /// `globs` as given; none means the job may touch anything.
    pub fn new(globs: Vec<String>) -> Touches {
        if globs.is_empty() {
            Touches(vec!["**".into()])
        } else {
            Touches(globs)
        }
    }

    pub fn globs(&self) -> &[String] {
        &self.0
    }

    /// Whether some path could match a glob of each (globs match whole paths from the root, as
    /// `context_files` do). Conservative: two globs are taken to overlap unless the literal text
    /// before their first wildcard shows they cannot (neither is a prefix of the other), so a
    /// false "overlap" only costs waiting, never a conflict.
    pub fn overlaps(&self, other: &Touches) -> bool {
        self.0
            .iter()
            .any(|a| other.0.iter().any(|b| globs_may_meet(a, b)))
    }
}

fn literal_prefix(glob: &str) -> (&str, bool) {
    match glob.find(['*', '?', '[', '{', '\\']) {
        Some(at) => (&glob[..at], false),
        None => (glob, true),
    }
}

fn globs_may_meet(a: &str, b: &str) -> bool {
    // Globs match whole paths from the repository's root (globset, as `context_files`): every
    // path a glob matches starts with its literal beginning, so a path both match starts with
    // both, and one beginning is a prefix of the other.
    let (a, a_literal) = literal_prefix(a.trim_start_matches('/'));
    let (b, b_literal) = literal_prefix(b.trim_start_matches('/'));
    match (a_literal, b_literal) {
        // Two exact paths meet when equal, or when one is a folder holding the other.
        (true, true) => {
            a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
        }
        _ => a.starts_with(b) || b.starts_with(a),
    }
}

impl Queued {
    /// Priority after aging: lower runs sooner.
    pub fn effective_priority(&self, aging: Duration) -> i64 {
        let steps = if aging.is_zero() {
            0
        } else {
            (self.waited.as_secs_f64() / aging.as_secs_f64()) as i64
        };
        self.priority.saturating_sub(steps)
    }
}

/// The queued jobs to start now, at most `free` of them, in the order to start them: most urgent
/// first (effective priority, then the longest wait), each only if the per-repository limit
/// allows it and it overlaps no running job (`running`: on every server sharing the queue), nor
/// one picked before it, on the same repository.
pub fn pick<'q>(
    queued: &'q [Queued],
    running: &[Running],
    free: usize,
    limits: Limits,
) -> Vec<&'q Queued> {
    let mut order: Vec<&Queued> = queued.iter().collect();
    order.sort_by(|a, b| {
        a.effective_priority(limits.aging)
            .cmp(&b.effective_priority(limits.aging))
            .then(b.waited.cmp(&a.waited))
            .then(a.id.cmp(&b.id))
    });
    let mut busy: Vec<Running> = running.to_vec();
    let mut picked = Vec::new();
    for job in order {
        if picked.len() >= free {
            break;
        }
        let same_repo: Vec<&Running> = busy.iter().filter(|r| r.repo == job.repo).collect();
        if same_repo.len() >= limits.per_repo
            || same_repo.iter().any(|r| r.touches.overlaps(&job.touches))
        {
            continue;
        }
        busy.push(Running {
            repo: job.repo.clone(),
            touches: job.touches.clone(),
        });
        picked.push(job);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, priority: i64, waited: u64, repo: &str, touches: &[&str]) -> Queued {
        Queued {
            id: id.into(),
            priority,
            waited: Duration::from_secs(waited),
            repo: repo.into(),
            touches: Touches::new(touches.iter().map(|t| t.to_string()).collect()),
        }
    }

    const LIMITS: Limits = Limits {
        global: 2,
        per_repo: 2,
        aging: Duration::from_secs(60),
    };

    fn ids(picked: Vec<&Queued>) -> Vec<&str> {
        picked.iter().map(|q| q.id.as_str()).collect()
    }

    #[test]
    fn more_urgent_jobs_start_first_within_the_global_limit() {
        let queued = [
            job("low", 5, 0, "r1", &["a/**"]),
            job("urgent", 0, 0, "r2", &["b/**"]),
            job("mid", 2, 0, "r3", &["c/**"]),
        ];
        assert_eq!(ids(pick(&queued, &[], 2, LIMITS)), ["urgent", "mid"]);
    }

    #[test]
    fn a_job_that_waits_long_enough_overtakes_newer_urgent_ones() {
        let limits = Limits {
            global: 1,
            ..LIMITS
        };
        let queued = [
            job("old-low", 5, 10 * 60, "r1", &["a/**"]),
            job("new-urgent", 1, 0, "r2", &["b/**"]),
        ];
        assert_eq!(ids(pick(&queued, &[], limits.global, limits)), ["old-low"]);
    }

    #[test]
    fn overlapping_jobs_on_one_repository_wait_and_disjoint_ones_run_together() {
        let running = [Running {
            repo: "r".into(),
            touches: Touches::new(vec!["src/auth/**".into()]),
        }];
        let limits = Limits {
            global: 4,
            per_repo: 4,
            ..LIMITS
        };
        let queued = [
            job("same-files", 0, 0, "r", &["src/auth/login.rs"]),
            job("other-files", 0, 0, "r", &["docs/**"]),
            job("other-repo", 0, 0, "s", &["src/auth/**"]),
            job("anything", 0, 0, "r", &[]),
        ];
        assert_eq!(
            ids(pick(&queued, &running, 3, limits)),
            ["other-files", "other-repo"]
        );
    }

    #[test]
    fn two_queued_overlapping_jobs_do_not_start_together() {
        let queued = [
            job("first", 1, 0, "r", &["src/**"]),
            job("second", 1, 0, "r", &["src/lib.rs"]),
        ];
        assert_eq!(ids(pick(&queued, &[], 2, LIMITS)), ["first"]);
    }

    #[test]
    fn the_per_repository_limit_holds() {
        let limits = Limits {
            global: 4,
            per_repo: 1,
            ..LIMITS
        };
        let queued = [
            job("a", 0, 0, "r", &["a/**"]),
            job("b", 0, 0, "r", &["b/**"]),
        ];
        assert_eq!(ids(pick(&queued, &[], limits.global, limits)), ["a"]);
    }

    #[test]
    fn globs_overlap_conservatively() {
        let t = |g: &[&str]| Touches::new(g.iter().map(|s| s.to_string()).collect());
        assert!(t(&["src/**"]).overlaps(&t(&["src/a/b.rs"])));
        assert!(t(&["src/a*"]).overlaps(&t(&["src/ab/c.rs"])));
        assert!(t(&["*.sh"]).overlaps(&t(&["scripts/x.sh"])));
        assert!(t(&["src"]).overlaps(&t(&["src/lib.rs"])));
        assert!(!t(&["src/**"]).overlaps(&t(&["docs/**"])));
        assert!(!t(&["src/a.rs"]).overlaps(&t(&["src/a.rs.bak"])));
        assert!(!t(&["greet.sh"]).overlaps(&t(&["test.sh"])));
    }
}
