//! The review console in a real browser (headless Chromium through WebDriver) against a real
//! `kiln serve`, real jobs in real containers: sign in, a job moving through its stages without
//! a reload, its escalation with the policy finding at its line, refusals (a rejection without a
//! note, a form from another origin, a second decision, no session), an approval that publishes,
//! and hostile text from a job that stays text.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
use common::serve::{Jobs, Server};
use common::{BUSYBOX, require_busybox};
use serde_json::Value;

/// A job file in `jobs`' folder whose generator runs `script` (after the greeting the tests
/// want) and whose prompt is `prompt`, with `extra` tables.
fn job_file(jobs: &Jobs, name: &str, prompt: &str, script: &str, extra: &str) -> PathBuf {
    let repo = jobs.dir.path().join("repo");
    let script = format!("echo 'echo \"Hello, kiln!\"' > /kiln/workspace/greet.sh; {script}");
    let text = format!(
        "repo = {repo:?}\nbranch = \"factory/{name}\"\nprompt = {prompt:?}\n\n\
         [generate]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\n\
         [test]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"test.sh\"]\n\n{extra}\n",
        repo = repo.display().to_string()
    );
    let path = jobs.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Signs `browser` in to `server`'s console with its token.
async fn sign_in(browser: &Browser, server: &Server) {
    browser
        .client
        .goto(&format!("{}/console", server.url))
        .await
        .unwrap();
    let at = browser.client.current_url().await.unwrap();
    assert_eq!(at.path(), "/console/sign-in", "no session, no page");
    browser.fill("#token", &server.token).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_path("/console").await;
    assert_eq!(browser.text("h1").await, "Jobs");
}

/// The session cookie the browser holds (WebDriver reads HttpOnly cookies; a page cannot).
async fn session_cookie(browser: &Browser) -> String {
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let c = cookies
        .iter()
        .find(|c| c.name() == "kiln_session")
        .expect("signed in, the browser holds a session cookie");
    assert_eq!(c.http_only(), Some(true));
    format!("kiln_session={}", c.value())
}

/// curl POST of a form to `server`: status and body.
fn post_form(server: &Server, path: &str, headers: &[String], form: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .args(["--data", form])
        .arg(format!("{}{path}", server.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// A page on another origin (another loopback port) that posts `form` to `action` as soon as
/// it loads: what a hostile site would do with a reviewer's browser.
fn hostile_site(action: &str, fields: &[(&str, &str)]) -> String {
    let inputs: String = fields
        .iter()
        .map(|(k, v)| format!("<input name=\"{k}\" value=\"{v}\">"))
        .collect();
    let page = format!(
        "<!DOCTYPE html><html><body><form id=\"f\" method=\"post\" action=\"{action}\">{inputs}</form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(4) {
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    url
}

fn branch_in(out: &Path, branch: &str) -> bool {
    git2::Repository::open(out)
        .unwrap()
        .find_reference(&format!("refs/heads/{branch}"))
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_watches_a_job_escalate_and_decides_it_in_the_browser() {
    require_busybox();
    let jobs = Jobs::new();
    let out = jobs.dir.path().join("out.git");
    git2::Repository::init_bare(&out).unwrap();
    let bundle = common::default_bundle();
    let server = Server::start(
        &jobs.state(),
        &[
            "--policies",
            bundle.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let browser = Browser::start().await;
    sign_in(&browser, &server).await;
    assert!(
        !browser
            .eval("return document.cookie")
            .await
            .as_str()
            .unwrap()
            .contains("kiln_session"),
        "the session cookie is not readable from script"
    );
    // A mark on this page: still there later means the page was never reloaded.
    browser.eval("window.__same_page = true; return true").await;
    let job = job_file(
        &jobs,
        "console",
        "add a session check",
        "sleep 3; mkdir -p /kiln/workspace/src/auth; \
         printf 'const a = 1;\\nconst b = 2;\\nconst key = process.env.KEY;\\n' > /kiln/workspace/src/auth/session.js",
        "",
    );
    let id = server.submit(&job);
    let row = format!("document.querySelector('tr[data-id=\"{id}\"]')");
    browser
        .wait_until(
            "the submitted job appears",
            Duration::from_secs(20),
            &format!("return {row} !== null"),
        )
        .await;
    browser
        .wait_until(
            "the job is seen generating",
            Duration::from_secs(30),
            &format!("return ({row}?.textContent || '').includes('generate')"),
        )
        .await;
    browser
        .wait_until(
            "the job is seen escalated",
            Duration::from_secs(90),
            &format!("return ({row}?.textContent || '').includes('escalated')"),
        )
        .await;
    assert_eq!(
        browser.eval("return window.__same_page === true").await,
        Value::Bool(true),
        "the list moved without a reload"
    );

    // The escalations waiting, and the job's page from there.
    browser.click("a[href='/console/escalations']").await;
    assert!(browser.text("ol.escalations").await.contains(&id));
    browser
        .click(&format!("ol.escalations a[href='/console/jobs/{id}']"))
        .await;
    assert!(browser.text("#escalation").await.contains("policy"));
    let finding_at_line_3 = browser
        .eval(
            "const notes = [...document.querySelectorAll(
                 'section.file[data-path=\"src/auth/session.js\"] tr.note')];
             const n = notes.find(t => t.textContent.includes('process.env'));
             if (!n) return 'no note';
             let line = n.previousElementSibling;
             while (line && line.classList.contains('note')) line = line.previousElementSibling;
             return line ? line.dataset.new : 'no line';",
        )
        .await;
    assert_eq!(
        finding_at_line_3, "3",
        "the policy finding sits under line 3"
    );
    let shot = browser.client.screenshot().await.unwrap();
    let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-escalation.png");
    std::fs::write(&saved, &shot).unwrap();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");

    // A rejection without a note is refused by the server (the browser's own check taken off).
    browser
        .eval("document.getElementById('reject-note').removeAttribute('required'); return true")
        .await;
    browser.fill("#reject-by", "mallory").await;
    browser.click("form[action$='/reject'] button").await;
    browser
        .wait_for_path(&format!("/console/jobs/{id}/reject"))
        .await;
    assert!(
        browser.text(".refusal").await.contains("note"),
        "{}",
        browser.text("main").await
    );
    assert_eq!(server.job(&id)["state"], "escalated");

    // A form from another origin, with this session's own CSRF token even, is refused.
    let cookie = session_cookie(&browser).await;
    browser
        .client
        .goto(&format!("{}/console/jobs/{id}", server.url))
        .await
        .unwrap();
    let csrf = browser
        .eval("return document.querySelector('input[name=csrf]').value")
        .await;
    let csrf = csrf.as_str().unwrap().to_string();
    let hostile = hostile_site(
        &format!("{}/console/jobs/{id}/reject", server.url),
        &[
            ("by", "mallory"),
            ("note", "from elsewhere"),
            ("csrf", &csrf),
        ],
    );
    browser.client.goto(&hostile).await.unwrap();
    browser
        .wait_until(
            "the hostile form is answered",
            Duration::from_secs(10),
            "return location.href.includes('/console/jobs/')",
        )
        .await;
    assert!(browser.text(".refusal").await.contains("another site"));
    assert_eq!(server.job(&id)["state"], "escalated");

    // Without a session, or without the CSRF token, nothing is decided.
    let form = format!("by=mallory&note=x&csrf={csrf}");
    let reject = format!("/console/jobs/{id}/reject");
    let (code, _) = post_form(&server, &reject, &[], &form);
    assert_eq!(code, 401);
    let (code, _) = post_form(
        &server,
        &reject,
        &[format!("Cookie: {cookie}")],
        "by=m&note=x",
    );
    assert_eq!(code, 403);
    assert_eq!(server.job(&id)["state"], "escalated");

    // Approve; the page says what came of it, and the branch is in --out.
    browser
        .client
        .goto(&format!("{}/console/jobs/{id}", server.url))
        .await
        .unwrap();
    browser.fill("#approve-by", "alice").await;
    browser
        .fill("#approve-note", "checked the session code")
        .await;
    browser.click("form[action$='/approve'] button").await;
    browser.wait_for_path(&format!("/console/jobs/{id}")).await;
    let result = browser.text(".result").await;
    assert!(result.contains("approved by alice"), "{result}");
    assert!(
        browser
            .text("ul.published")
            .await
            .contains("refs/heads/factory/console")
    );
    assert!(branch_in(&out, "factory/console"));
    assert_eq!(server.job(&id)["state"], "succeeded");

    // A second decision is refused, and changes nothing.
    let (code, body) = post_form(
        &server,
        &reject,
        &[
            format!("Cookie: {cookie}"),
            format!("Origin: {}", server.url),
        ],
        &form,
    );
    assert_eq!(code, 409, "{body}");
    assert_eq!(server.job(&id)["state"], "succeeded");

    // The page is whole without script: what a reader with JavaScript off gets.
    let out = Command::new("curl")
        .args(["-s", "-b", &cookie])
        .arg(format!("{}/console/jobs/{id}", server.url))
        .output()
        .unwrap();
    let html = String::from_utf8_lossy(&out.stdout);
    for part in [
        "process.env",
        "approved by alice",
        "refs/heads/factory/console",
        "job.state",
    ] {
        assert!(html.contains(part), "`{part}` in the page as served");
    }

    // Behind TLS (a proxy saying so), the cookie is Secure.
    let out = Command::new("curl")
        .args(["-s", "-i", "-H", "X-Forwarded-Proto: https", "--data"])
        .arg(format!("token={}", server.token))
        .arg(format!("{}/console/sign-in", server.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let set = head.lines().find(|l| l.starts_with("set-cookie:")).unwrap();
    for attribute in ["httponly", "samesite=strict", "secure", "max-age="] {
        assert!(set.contains(attribute), "{set}");
    }

    // Signing out ends the session: its cookie no longer opens a page.
    browser.click("nav button[type=submit]").await;
    browser.wait_for_path("/console/sign-in").await;
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-b", &cookie])
        .arg(format!("{}/console", server.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "303");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_from_a_job_is_shown_as_text_and_never_runs() {
    require_busybox();
    let jobs = Jobs::new();
    let server = Server::start(&jobs.state(), &[]);
    let payloads = [
        "<script>window.__pwned = 1</script>",
        "<img src=x onerror=\"window.__pwned = 2\">",
        "<a href=\"javascript:window.__pwned = 3\">click me</a>",
    ];
    let prompt = payloads.join(" ");
    // A file named as markup, holding markup, and a log full of it.
    let script = "f='/kiln/workspace/<img src=x onerror=window.__pwned=4>.html'; \
                  printf '%s\\n' '<script>window.__pwned = 5</script>' '<a href=\"javascript:window.__pwned=6\">x</a>' > \"$f\"; \
                  echo '<script>window.__pwned = 7</script><img src=x onerror=\"window.__pwned = 8\">'";
    // The reviewer approves, with a comment (hostile too) at greet.sh's first line.
    let verdict = r#"{"verdict":"approve","summary":"fine","comments":[{"path":"greet.sh","line":1,"message":"<script>window.__pwned = 9</script> look here"}]}"#;
    let review = format!(
        "[review]\nimage = \"{BUSYBOX}\"\ntimeout = \"60s\"\ncommand = [\"sh\", \"-c\", {:?}]\n",
        format!("printf '%s' '{verdict}' > /kiln/out/verdict.json")
    );
    let id = server.submit(&job_file(&jobs, "hostile", &prompt, script, &review));
    assert_eq!(server.wait(&id), 0);

    let browser = Browser::start().await;
    sign_in(&browser, &server).await;
    browser.console().await;
    browser
        .client
        .goto(&format!("{}/console/jobs/{id}", server.url))
        .await
        .unwrap();
    let body = browser.text("main").await;
    for shown in [
        payloads[0],
        payloads[1],
        "<img src=x onerror=window.__pwned=4>.html",
        "<script>window.__pwned = 5</script>",
    ] {
        assert!(body.contains(shown), "`{shown}` is shown as text");
    }
    // The reviewer's comment sits under the line it names.
    let comment_at = browser
        .eval(
            "const n = document.querySelector('section.file[data-path=\"greet.sh\"] tr.note');
             if (!n) return 'no note';
             let line = n.previousElementSibling;
             while (line && line.classList.contains('note')) line = line.previousElementSibling;
             return [n.textContent, line ? line.dataset.new : 'no line'];",
        )
        .await;
    assert_eq!(comment_at[1], "1", "{comment_at}");
    let comment = comment_at[0].as_str().unwrap();
    assert!(comment.starts_with("reviewer"), "{comment}");
    assert!(
        comment.contains("<script>window.__pwned = 9</script> look here"),
        "{comment}"
    );
    let checks = browser
        .eval(
            "return {
                pwned: window.__pwned === undefined,
                scripts: [...document.scripts].map(s => s.src),
                images: document.images.length,
                handlers: document.querySelectorAll('[onerror], [onload], [onclick]').length,
                js_links: document.querySelectorAll('a[href^=\"javascript:\" i]').length,
            }",
        )
        .await;
    assert_eq!(checks["pwned"], true, "{checks}");
    let scripts = checks["scripts"].as_array().unwrap();
    assert_eq!(scripts.len(), 1, "{checks}");
    assert!(
        scripts[0]
            .as_str()
            .unwrap()
            .ends_with("/console/assets/console.js")
    );
    assert_eq!(checks["images"], 0, "{checks}");
    assert_eq!(checks["handlers"], 0, "{checks}");
    assert_eq!(checks["js_links"], 0, "{checks}");
    let console = browser.console().await;
    assert!(
        !console
            .iter()
            .any(|(_, text)| text.contains("pwned") || text.contains("Content Security Policy")),
        "nothing tried to run: {console:?}"
    );

    // The list reads on a phone's width without sideways scrolling.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser
        .client
        .goto(&format!("{}/console", server.url))
        .await
        .unwrap();
    assert_eq!(
        browser
            .eval("return document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        Value::Bool(true)
    );
}
