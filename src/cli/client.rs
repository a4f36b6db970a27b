//! The client of `kiln serve`: `kiln submit | status | list | cancel | logs | wait`. The server's
//! address and token come from `--server` and `--token` (or `KILN_SERVER`, `KILN_TOKEN`), else
//! from the files a local server keeps in its state folder.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kiln::{Error, ExitCode};
use serde_json::Value;

#[derive(Args, Clone)]
pub struct Remote {
    /// The server, like `http://127.0.0.1:7878`. Default: the state folder's `address` file.
    #[arg(long, env = "KILN_SERVER", global = true)]
    server: Option<String>,
    /// The bearer token. Default: the state folder's `token` file.
    #[arg(long, env = "KILN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The server's state folder (`kiln serve` keeps its store, token, address and artifacts
    /// there). Default: `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`.
    #[arg(long, env = "KILN_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Submit a job file (TOML, or the seed article's .json record); prints its id.
    Submit { job: PathBuf },
    /// One job's state, as JSON.
    Status { id: String },
    /// Jobs, oldest first: id, state, attempt and stage, status.
    List {
        #[arg(long)]
        state: Option<String>,
    },
    /// Cancel a job; a running one's containers are gone when this returns.
    Cancel { id: String },
    /// The stage logs a job has written so far; with --follow, each stage's as it ends, until
    /// the job does.
    Logs {
        id: String,
        #[arg(long)]
        follow: bool,
    },
    /// Wait for a job to end; exits with the code `kiln run` would have.
    Wait {
        id: String,
        /// Give up after this long (exit 3).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Remote {
    fn connect(&self) -> Result<Client, Error> {
        let dir = self
            .state_dir
            .clone()
            .or_else(super::serve::default_state_dir);
        let read = |name: &str| -> Result<String, Error> {
            let dir = dir
                .as_ref()
                .ok_or_else(|| Error::Usage(format!("give --{name} or --state-dir")))?;
            let path = dir.join(if name == "server" { "address" } else { name });
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    Error::Usage(format!(
                        "cannot read {} ({e}); give --{name}, or start `kiln serve`",
                        path.display()
                    ))
                })
        };
        let base = match &self.server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => read("server")?,
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => read("token")?,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| Error::Http {
                context: "cannot make an HTTP client".into(),
                source,
            })?;
        Ok(Client { base, token, http })
    }
}

impl Client {
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| Error::Io {
                context: format!("cannot reach the server at {}", self.base),
                source: std::io::Error::other(e.without_url()),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]
            .as_str()
            .unwrap_or("no explanation")
            .to_string();
        Err(match status.as_u16() {
            400 | 404 | 413 => Error::Usage(format!("the server refused: {message}")),
            401 => Error::Usage(format!("the server refused the token: {message}")),
            _ => Error::Server(format!("the server failed ({status}): {message}")),
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, Error> {
        self.call(request)
            .await?
            .json()
            .await
            .map_err(|source| Error::Http {
                context: "the server's answer is not JSON".into(),
                source,
            })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub async fn exec(remote: &Remote, command: ClientCommand) -> Result<ExitCode, Error> {
    let client = remote.connect()?;
    match command {
        ClientCommand::Submit { job } => {
            let text = std::fs::read_to_string(&job)
                .map_err(Error::io(format!("cannot read {}", job.display())))?;
            let json = job.extension().is_some_and(|e| e == "json");
            let content_type = if json {
                "application/json"
            } else {
                "application/toml"
            };
            let mut request = client
                .http
                .post(client.url("/jobs"))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(text);
            // The job's trace continues the caller's, as `kiln run`'s does.
            if let Some(parent) = super::run::trace_parent_from_env() {
                request = request.header("traceparent", parent.as_str());
            }
            let answer = client.json(request).await?;
            println!("{}", answer["id"].as_str().unwrap_or_default());
            Ok(ExitCode::Success)
        }
        ClientCommand::Status { id } => {
            let job = client
                .json(client.http.get(client.url(&format!("/jobs/{id}"))))
                .await?;
            super::print_json(&job)?;
            Ok(ExitCode::Success)
        }
        ClientCommand::List { state } => {
            let mut request = client.http.get(client.url("/jobs"));
            if let Some(state) = state {
                request = request.query(&[("state", state)]);
            }
            let answer = client.json(request).await?;
            for job in answer["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<15}  attempt {}  {:<10}  {}",
                    job["id"].as_str().unwrap_or_default(),
                    job["state"].as_str().unwrap_or_default(),
                    job["attempt"],
                    job["stage"].as_str().unwrap_or("-"),
                    job["reason"].as_str().unwrap_or(""),
                );
            }
            Ok(ExitCode::Success)
        }
        ClientCommand::Cancel { id } => {
            let job = client
                .json(client.http.post(client.url(&format!("/jobs/{id}/cancel"))))
                .await?;
            eprintln!("{id}: {}", job["state"].as_str().unwrap_or_default());
            Ok(ExitCode::Success)
        }
        ClientCommand::Logs { id, follow } => {
            let request = client
                .http
                .get(client.url(&format!("/jobs/{id}/logs")))
                .query(&[("follow", follow)])
                // Following lasts as long as the job does.
                .timeout(Duration::from_secs(if follow { 48 * 3600 } else { 120 }));
            let mut response = client.call(request).await?;
            use std::io::Write;
            while let Some(chunk) = response.chunk().await.map_err(|source| Error::Http {
                context: "reading the logs".into(),
                source,
            })? {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&chunk);
                let _ = out.flush();
            }
            Ok(ExitCode::Success)
        }
        ClientCommand::Wait { id, timeout } => wait(&client, &id, timeout).await,
    }
}

/// Polls until the job ends, then exits as `kiln run` would have for it.
async fn wait(client: &Client, id: &str, timeout: Option<Duration>) -> Result<ExitCode, Error> {
    let started = Instant::now();
    loop {
        let job = client
            .json(client.http.get(client.url(&format!("/jobs/{id}"))))
            .await?;
        let state = job["state"].as_str().unwrap_or_default();
        if !matches!(state, "queued" | "running") {
            eprintln!(
                "{id}: {state}: {}",
                job["reason"].as_str().unwrap_or_default()
            );
            if state == "cancelled" {
                return Ok(ExitCode::Interrupted);
            }
            let code = job["exit_code"].as_i64().unwrap_or(1);
            return Ok(ExitCode::from_code(code).unwrap_or(ExitCode::Internal));
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(Error::Io {
                context: format!("job {id} is still {state}"),
                source: std::io::Error::from(std::io::ErrorKind::TimedOut),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
