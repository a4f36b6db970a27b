//! The SQLite store's tests: states, claims under the limits, leases, the restart rule,
//! cancel, decisions and values it does not know.

use super::super::{Location, MAX_RUNS, Store};
use super::*;
use crate::job::Format;
use crate::model::{Phase, Stage, Status};

const ME: &str = "server-a";
const LEASE: Duration = Duration::from_secs(30);

fn open(path: &Path) -> Store {
    Store::open(&Location::Sqlite(path.into())).unwrap()
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("kiln.db"));
    (dir, store)
}

fn submit(store: &mut Store, id: &str, touches: &str) {
    store
        .submit(NewJob {
            id,
            priority: 5,
            repo: "/r",
            touches: &[touches.into()],
            spec: "repo = '/r'",
            spec_format: Format::Toml,
            trace_parent: None,
        })
        .unwrap();
}

fn limits(global: usize) -> scheduler::Limits {
    scheduler::Limits {
        global,
        per_repo: 4,
        aging: Duration::from_secs(60),
    }
}

fn claim(store: &mut Store, global: usize) -> Vec<String> {
    let claimed = store.claim(ME, limits(global), LEASE).unwrap();
    claimed.started.into_iter().map(|r| r.id).collect()
}

fn end(state: State) -> End<'static> {
    End {
        state,
        status: Some(Status::Succeeded),
        exit_code: 0,
        reason: "tests passed",
    }
}

#[test]
fn a_job_moves_through_its_states_and_survives_reopening() {
    let (dir, mut store) = store();
    submit(&mut store, "a", "src/**");
    assert_eq!(claim(&mut store, 2), ["a"]);
    store
        .progress("a", ME, 2, Phase::Stage(Stage::Test))
        .unwrap();
    assert!(
        claim(&mut store, 2).is_empty(),
        "a running job is not claimed again"
    );
    assert!(store.holds("a", ME).unwrap());
    assert!(!store.holds("a", "server-b").unwrap());
    drop(store);
    let mut store = open(&dir.path().join("kiln.db"));
    let job = store.get("a").unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempt, job.stage, job.server.as_deref()),
        (State::Running, 2, Some(Phase::Stage(Stage::Test)), Some(ME))
    );
    assert_eq!(job.touches, ["src/**"]);
    assert!(
        store
            .finish("a", "server-b", &end(State::Succeeded))
            .is_err(),
        "only the holder ends a job"
    );
    store.finish("a", ME, &end(State::Succeeded)).unwrap();
    let job = store.get("a").unwrap().unwrap();
    assert_eq!((job.state, job.exit_code), (State::Succeeded, Some(0)));
    assert!(store.get("nope").unwrap().is_none());
}

#[test]
fn the_newest_jobs_come_first_within_a_state() {
    let (_dir, mut store) = store();
    for id in ["a", "b", "c"] {
        submit(&mut store, id, &format!("{id}/**"));
    }
    store.cancel("c").unwrap();
    let ids = |rows: Vec<JobRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(store.newest(None, 2).unwrap()), ["c", "b"]);
    assert_eq!(
        ids(store.newest(Some(State::Queued), 5).unwrap()),
        ["b", "a"]
    );
}

#[test]
fn a_claim_keeps_the_limits_and_overlapping_jobs_apart() {
    let (_dir, mut store) = store();
    submit(&mut store, "a", "src/**");
    submit(&mut store, "b", "src/lib.rs");
    submit(&mut store, "c", "docs/**");
    submit(&mut store, "d", "tests/**");
    assert_eq!(claim(&mut store, 2), ["a", "c"]);
    assert!(claim(&mut store, 2).is_empty(), "the server is full");
    store.finish("a", ME, &end(State::Succeeded)).unwrap();
    assert_eq!(claim(&mut store, 2), ["b"]);
    let held = store.beat(ME, LEASE).unwrap();
    let mut ids: Vec<&str> = held.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
}

#[test]
fn a_restart_requeues_stranded_jobs_keeping_their_runs_and_fails_repeat_offenders() {
    let (_dir, mut store) = store();
    submit(&mut store, "thrice", "a/**");
    for run in 1..=MAX_RUNS {
        assert_eq!(claim(&mut store, 1), ["thrice"]);
        let recovered = store.recover(ME).unwrap();
        assert_eq!(recovered[0].runs, run);
    }
    let job = store.get("thrice").unwrap().unwrap();
    assert_eq!((job.state, job.runs), (State::Failed, MAX_RUNS));

    submit(&mut store, "once", "b/**");
    submit(&mut store, "cancelled", "c/**");
    assert_eq!(claim(&mut store, 2).len(), 2);
    store.cancel("cancelled").unwrap();
    store.recover(ME).unwrap();
    let state = |store: &mut Store, id: &str| store.get(id).unwrap().unwrap();
    assert_eq!(state(&mut store, "once").state, State::Queued);
    assert_eq!(state(&mut store, "once").runs, 1);
    assert_eq!(state(&mut store, "cancelled").state, State::Cancelled);
}

#[test]
fn cancelling_a_queued_job_is_immediate_and_a_running_one_is_asked() {
    let (_dir, mut store) = store();
    submit(&mut store, "r", "r/**");
    assert_eq!(claim(&mut store, 1), ["r"]);
    submit(&mut store, "q", "q/**");
    assert_eq!(store.cancel("q").unwrap(), Some(State::Cancelled));
    assert_eq!(store.cancel("r").unwrap(), Some(State::Running));
    assert!(store.get("r").unwrap().unwrap().cancel_asked);
    assert!(store.beat(ME, LEASE).unwrap()[0].cancel_asked);
    assert_eq!(store.cancel("missing").unwrap(), None);
    assert_eq!(store.list(Some(State::Queued), 10).unwrap().len(), 0);
}

#[test]
fn one_decision_at_a_time() {
    let (_dir, mut store) = store();
    submit(&mut store, "e", "e/**");
    claim(&mut store, 1);
    store.finish("e", ME, &end(State::Escalated)).unwrap();
    store.claim_decision("e", ME).unwrap();
    assert!(store.claim_decision("e", "server-b").is_err());
    store.release_decision("e").unwrap();
    store.claim_decision("e", "server-b").unwrap();
    store.decide("e", &end(State::Succeeded)).unwrap();
    assert!(
        store.claim_decision("e", ME).is_err(),
        "a decided job stays decided"
    );
}

#[test]
fn a_store_from_before_versions_is_adopted_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    {
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, priority INTEGER NOT NULL,
             submitted_ms INTEGER NOT NULL, started_ms INTEGER, finished_ms INTEGER,
             repo TEXT NOT NULL, touches TEXT NOT NULL, spec TEXT NOT NULL,
             spec_format TEXT NOT NULL, runs INTEGER NOT NULL DEFAULT 0,
             attempt INTEGER NOT NULL DEFAULT 0, stage TEXT, status TEXT, exit_code INTEGER,
             reason TEXT, cancel_asked INTEGER NOT NULL DEFAULT 0);
             INSERT INTO jobs (id, state, priority, submitted_ms, repo, touches, spec, spec_format)
             VALUES ('old', 'queued', 5, 1, '/r', '[]', 'x', 'toml');",
        )
        .unwrap();
    }
    let mut store = open(&path);
    assert_eq!(store.get("old").unwrap().unwrap().state, State::Queued);
    let Store::Sqlite(inner) = &store else {
        panic!("a path is a SQLite store")
    };
    let version: u32 = inner
        .db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::VERSION);
    inner
        .db
        .pragma_update(None, "user_version", schema::VERSION + 1)
        .unwrap();
    drop(store);
    let err = Store::open(&Location::Sqlite(path.clone()))
        .err()
        .expect("a newer store is refused");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("newer than this kiln"), "{text}");
    assert!(text.contains("kiln.db"), "{text}");
}

#[test]
fn a_value_the_store_does_not_know_is_an_error_not_a_guess() {
    let (_dir, mut store) = store();
    submit(&mut store, "x", "x/**");
    let Store::Sqlite(inner) = &store else {
        panic!("a path is a SQLite store")
    };
    inner
        .db
        .execute("UPDATE jobs SET state = 'exploded' WHERE id = 'x'", [])
        .unwrap();
    assert!(store.get("x").is_err());
}
