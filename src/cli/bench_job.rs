//! `kiln bench job`: a whole trivial job through the real `kiln run` (this binary: clone, two
//! sandboxed stages, diff, publish) against two bare `docker run --rm --network none` of the
//! same commands, interleaved so both see the same machine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::bench::Figures;
use kiln::{Error, ExitCode};

use super::bench::ms;

const IMAGE: &str = kiln::images::BUSYBOX;
/// The generator's command: writes a file into the workspace (kiln's volume, `$KILN_WORKSPACE`;
/// a folder it makes itself under bare `docker run`).
const GENERATE: &str =
    "w=${KILN_WORKSPACE:-/tmp/w}; mkdir -p $w && echo 'echo \"Hello, kiln!\"' > $w/greet.sh";
/// The test's command: reads what is there.
const TEST: &str = "cat ${KILN_WORKSPACE:-/tmp/w}/greet.sh 2>/dev/null; true";

pub fn exec(runs: usize) -> Result<ExitCode, Error> {
    if runs < 2 {
        return Err(Error::Usage("--runs must be at least 2".into()));
    }
    let dir = tempfile::tempdir().map_err(Error::io("cannot make a temporary folder"))?;
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).map_err(Error::io("cannot make the repository"))?;
    std::fs::write(repo.join("greet.sh"), "echo \"Hello, world!\"\n")
        .map_err(Error::io("cannot write the repository"))?;
    let job = dir.path().join("job.toml");
    let text = format!(
        "repo = {repo:?}\nbranch = \"factory/bench\"\nprompt = \"greet kiln\"\n\n\
         [generate]\nimage = \"{IMAGE}\"\ncommand = [\"sh\", \"-c\", {GENERATE:?}]\n\n\
         [test]\nimage = \"{IMAGE}\"\ncommand = [\"sh\", \"-c\", {TEST:?}]\n",
        repo = repo.display().to_string()
    );
    std::fs::write(&job, text).map_err(Error::io("cannot write the job file"))?;

    let mut kiln = Figures {
        name: "kiln run (clone, 2 stages, diff, publish)",
        samples: Vec::new(),
    };
    let mut bare = Figures {
        name: "2 x docker run --rm --network none",
        samples: Vec::new(),
    };
    // One of each first, not counted: images and caches warm.
    kiln_run(dir.path(), &job, 0)?;
    bare_runs()?;
    for n in 1..=runs {
        kiln.samples.push(kiln_run(dir.path(), &job, n)?);
        bare.samples.push(bare_runs()?);
    }
    println!("a trivial job, {runs} runs each, interleaved, image {IMAGE}");
    for f in [&kiln, &bare] {
        println!(
            "  {:<46} p50 {:>7.1} ms   p95 {:>7.1} ms",
            f.name,
            ms(f.percentile(50.0)),
            ms(f.percentile(95.0))
        );
    }
    println!(
        "  ratio kiln/bare: p50 {:.2}   p95 {:.2}",
        ms(kiln.percentile(50.0)) / ms(bare.percentile(50.0)),
        ms(kiln.percentile(95.0)) / ms(bare.percentile(95.0))
    );
    Ok(ExitCode::Success)
}

/// One `kiln run` of `job`, publishing to a repository of its own; how long the process took.
fn kiln_run(dir: &Path, job: &Path, n: usize) -> Result<Duration, Error> {
    let exe = std::env::current_exe().map_err(Error::io("cannot find this binary"))?;
    let started = Instant::now();
    let ran = Command::new(exe)
        .arg("run")
        .arg(job)
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .arg("--out")
        .arg(dir.join(format!("out-{n}.git")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(Error::io("cannot run kiln run"))?;
    let took = started.elapsed();
    if !ran.status.success() {
        return Err(Error::Internal(format!(
            "the benchmark's kiln run did not succeed ({}): {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr).trim()
        )));
    }
    Ok(took)
}

/// The generator's and the test's commands, each in a bare `docker run`, one after the other.
fn bare_runs() -> Result<Duration, Error> {
    let started = Instant::now();
    for command in [GENERATE, TEST] {
        let status = Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                IMAGE,
                "sh",
                "-c",
                command,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(Error::io("cannot run the docker CLI for the baseline"))?;
        if !status.success() {
            return Err(Error::Internal(format!(
                "baseline `docker run` exited with {status}"
            )));
        }
    }
    Ok(started.elapsed())
}
