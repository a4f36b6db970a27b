//! A real headless Chromium for the console tests, driven through WebDriver (chromedriver from
//! Debian's packages, `.ci/setup` installs both): started on a free loopback port, stopped when
//! dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Debian's Chromium binary (its `/usr/bin/chromium` is a wrapper script).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

pub struct Browser {
    driver: Child,
    port: u16,
    pub client: Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (bash .ci/setup installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // --no-sandbox: the tests run as root, where Chromium's own sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1800"],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = loop {
            match ClientBuilder::native()
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            driver,
            port,
            client,
        }
    }

    /// The browser console's messages since the last call (level and text).
    pub async fn console(&self) -> Vec<(String, String)> {
        let session = self.client.session_id().await.unwrap().unwrap();
        let url = format!("http://127.0.0.1:{}/session/{session}/se/log", self.port);
        let answer: Value = reqwest::Client::new()
            .post(url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"]
            .as_array()
            .expect("chromedriver returns the browser log")
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The text of the first element `css` finds (waiting up to 10 s for one to be there).
    pub async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Waits until the page shown is at `path` (a form's answer has loaded).
    pub async fn wait_for_path(&self, path: &str) {
        self.wait_until(
            &format!("the page at {path}"),
            Duration::from_secs(15),
            &format!("return location.pathname === {path:?} && document.readyState === 'complete'"),
        )
        .await;
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `check` (a script returning true or false) is true, up to `within`.
    pub async fn wait_until(&self, what: &str, within: Duration, check: &str) {
        let deadline = Instant::now() + within;
        loop {
            if self.eval(check).await == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Types `text` into the field `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
            .click()
            .await
            .unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
