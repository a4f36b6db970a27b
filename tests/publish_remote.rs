//! Publishing to an https-style remote with credentials the operator config holds: a loopback
//! smart-HTTP git server (git http-backend behind Basic auth) made by the test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Fixture, HELLO_FILES, kiln, require_busybox};

const TOKEN: &str = "kiln-test-token-3f9a";

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Serves the bare repositories under `root` over smart HTTP on loopback, to `kiln:TOKEN` only.
fn git_server(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let exec = Command::new("git").arg("--exec-path").output().unwrap();
    let backend = Path::new(String::from_utf8_lossy(&exec.stdout).trim()).join("git-http-backend");
    let expected = format!("Basic {}", base64(format!("kiln:{TOKEN}").as_bytes()));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let (mut headers, mut length, mut chunked) = (Vec::new(), 0usize, false);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let (name, value) = line.trim_end().split_once(':').unwrap();
                let (name, value) = (name.to_ascii_lowercase(), value.trim().to_string());
                if name == "content-length" {
                    length = value.parse().unwrap();
                }
                if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
                headers.push((name, value));
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    reader.read_line(&mut size).unwrap();
                    let size = usize::from_str_radix(size.trim(), 16).unwrap();
                    let mut chunk = vec![0; size + 2];
                    reader.read_exact(&mut chunk).unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else {
                body.resize(length, 0);
                reader.read_exact(&mut body).unwrap();
            }
            let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            if header("authorization").as_deref() != Some(expected.as_str()) {
                let _ = write!(
                    stream,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"kiln-test\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                continue;
            }
            let mut parts = request.split_whitespace();
            let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let mut child = Command::new(&backend)
                .env_clear()
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REQUEST_METHOD", method)
                .env("PATH_INFO", path)
                .env("QUERY_STRING", query)
                .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("REMOTE_USER", "kiln")
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&body).unwrap();
            let output = child.wait_with_output().unwrap().stdout;
            let split = output
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
                .unwrap();
            let (head, rest) = (
                String::from_utf8_lossy(&output[..split.0]).into_owned(),
                &output[split.0 + split.1..],
            );
            let mut status = "200 OK".to_string();
            let mut out = Vec::new();
            for line in head.lines() {
                match line.split_once(':') {
                    Some((k, v)) if k.eq_ignore_ascii_case("status") => {
                        status = v.trim().to_string()
                    }
                    _ => out.push(line.to_string()),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                out.join("\r\n"),
                rest.len()
            );
            let _ = stream.write_all(rest);
        }
    });
    url
}

fn run_publishing(fixture: &Fixture, token_var: &str) -> common::Ran {
    let root = fixture.path("served");
    std::fs::create_dir_all(&root).unwrap();
    git2::Repository::init_bare(root.join("remote.git")).unwrap();
    let url = git_server(root);
    let cfg = fixture.path("kiln.toml");
    std::fs::write(
        &cfg,
        format!("[publish]\nusername = \"kiln\"\ntoken_env = \"{token_var}\"\n"),
    )
    .unwrap();
    // The generator fixes the greeting and writes down everything it can see of its environment.
    let job = fixture.job(
        "branch = \"factory/pushed\"\nprompt = \"greet kiln\"",
        "cd /kiln/workspace && echo 'echo \"Hello, kiln!\"' > greet.sh && env > seen-env.txt",
        "sh test.sh",
        "",
    );
    fixture.run_with(
        kiln()
            .env("KILN_TEST_PUSH_TOKEN", TOKEN)
            .env("KILN_TEST_WRONG_TOKEN", "not-the-token")
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .arg(&job),
        &["--out", &format!("{url}/remote.git")],
    )
}

#[test]
fn kiln_pushes_with_host_held_credentials_that_no_container_sees() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let ran = run_publishing(&fixture, "KILN_TEST_PUSH_TOKEN");
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let remote = git2::Repository::open(fixture.path("served/remote.git")).unwrap();
    let tree = remote
        .find_reference("refs/heads/factory/pushed")
        .unwrap()
        .peel_to_tree()
        .unwrap();
    let seen = tree
        .get_path(Path::new("seen-env.txt"))
        .unwrap()
        .to_object(&remote)
        .unwrap();
    let seen = String::from_utf8_lossy(seen.as_blob().unwrap().content()).into_owned();
    assert!(seen.contains("KILN_JOB_ID="), "{seen}");
    assert!(
        !seen.contains(TOKEN) && !seen.contains("KILN_TEST_PUSH_TOKEN"),
        "{seen}"
    );
    // Nor does kiln write it anywhere.
    let mut stack = vec![fixture.artifacts_root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(TOKEN),
                    "{}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_refused_credential_fails_the_publish_clearly() {
    require_busybox();
    let fixture = Fixture::with_git(HELLO_FILES);
    let ran = run_publishing(&fixture, "KILN_TEST_WRONG_TOKEN");
    assert_eq!(ran.code, 3, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("refused kiln's credentials"),
        "{}",
        ran.stderr
    );
    let remote = git2::Repository::open(fixture.path("served/remote.git")).unwrap();
    assert!(remote.find_reference("refs/heads/factory/pushed").is_err());
}
