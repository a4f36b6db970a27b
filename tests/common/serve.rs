//! A real `kiln serve` for the server tests: started on a free loopback port with its own state
//! folder, spoken to with curl and the client, killed (and what it made removed) when dropped;
//! and a folder of jobs for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BUSYBOX, HELLO_FILES, kiln};

/// A running `kiln serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// Remove what the server made when it is dropped (not after [`Server::kill`]).
    pub tidy: bool,
    pub state: PathBuf,
    pub url: String,
    pub token: String,
}

impl Server {
    /// A server whose jobs may name repositories in the folder holding `state`.
    pub fn start(state: &Path, extra: &[&str]) -> Server {
        Server::start_with_repos(state, &[state.parent().unwrap()], extra)
    }

    pub fn start_with_repos(state: &Path, repos: &[&Path], extra: &[&str]) -> Server {
        let _ = std::fs::remove_file(state.join("address"));
        let mut cmd = kiln();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state);
        for root in repos {
            cmd.arg("--repos").arg(root);
        }
        let child = cmd.args(extra).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.join("address").exists() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let read = |name| {
            std::fs::read_to_string(state.join(name))
                .unwrap()
                .trim()
                .to_string()
        };
        Server {
            child,
            tidy: true,
            state: state.into(),
            url: read("address"),
            token: read("token"),
        }
    }

    pub fn client(&self) -> Command {
        let mut cmd = kiln();
        cmd.arg("--state-dir").arg(&self.state);
        cmd
    }

    /// `curl`-like: method, path, optional body; returns status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        json: bool,
    ) -> (u16, String) {
        let content_type = [("Content-Type", "application/json")];
        let headers: &[(&str, &str)] = if json { &content_type } else { &[] };
        self.http_headers(method, path, token, body, headers)
    }

    /// [`Server::http`] with the server's token and `headers`.
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        self.http_headers(method, path, Some(&self.token.clone()), Some(body), headers)
    }

    fn http_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        // --path-as-is: `..` in a path reaches the server as written.
        cmd.args([
            "-s",
            "--path-as-is",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ]);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        for (name, value) in headers {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}{path}", self.url))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(body) = body {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(body).unwrap();
        }
        drop(child.stdin.take());
        let out = String::from_utf8_lossy(&child.wait_with_output().unwrap().stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    pub fn job(&self, id: &str) -> Value {
        let (code, body) = self.http(
            "GET",
            &format!("/jobs/{id}"),
            Some(&self.token.clone()),
            None,
            false,
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn submit(&self, job: &Path) -> String {
        let out = self.client().arg("submit").arg(job).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until job `id`'s generator container runs.
    pub fn wait_until_generating(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.job(id)["stage"] != "generate" {
            assert!(
                Instant::now() < deadline,
                "the job never started generating"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The stage is recorded as it starts; its container exists a moment later.
        let label = format!("label=kiln.job={id}");
        while super::docker_ids(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &label,
            "--filter",
            "label=kiln.stage=generate",
        ]))
        .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the generator's container never ran"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait(&self, id: &str) -> i32 {
        let out = self
            .client()
            .args(["wait", id, "--timeout", "120s"])
            .output()
            .unwrap();
        out.status.code().unwrap_or(-1)
    }

    /// SIGKILL, leaving what the server made for its restart to reap.
    pub fn kill(mut self) {
        self.tidy = false;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the server and removes what it made (its pooled holders and volumes, a running job's
/// containers), so that test runs leave nothing behind on the machine.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.tidy {
            return;
        }
        let label = format!("label=kiln.pid={}", self.child.id());
        for (list, remove) in [
            (vec!["ps", "-a", "-q"], vec!["rm", "-f"]),
            (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
        ] {
            let out = Command::new("docker")
                .args(&list)
                .args(["--filter", &label])
                .output()
                .unwrap();
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(&remove)
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A folder with a repository and job files whose paths are absolute, as a server needs.
pub struct Jobs {
    pub dir: tempfile::TempDir,
}

impl Jobs {
    pub fn new() -> Jobs {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in HELLO_FILES {
            std::fs::create_dir_all(dir.path().join("repo")).unwrap();
            std::fs::write(dir.path().join("repo").join(path), text).unwrap();
        }
        Jobs { dir }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A job that fixes the greeting after `sleep` seconds; `head` adds top-level keys.
    pub fn write(&self, name: &str, sleep: u32, head: &str) -> PathBuf {
        let repo = self.dir.path().join("repo");
        let script =
            format!("sleep {sleep}; echo 'echo \"Hello, kiln!\"' > /kiln/workspace/greet.sh");
        let text = format!(
            "repo = {repo:?}\nbranch = \"factory/{name}\"\nprompt = \"greet kiln\"\n{head}\n\n\
             [generate]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\n\
             [test]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"test.sh\"]\n",
            repo = repo.display().to_string()
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}
