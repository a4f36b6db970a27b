//! Agent adapters: `[generate] agent = "claude-code" | "codex" | "aider"` fills in how that CLI
//! runs headless in the sandbox: its image (built from images/), its argv, the model API host it
//! must reach and the secret it needs. The agent reads `agent_prompt` from `/kiln/job.json` (the
//! prompt, context files and the previous attempt's feedback, as text) and edits the workspace;
//! its output (the CLI's log) goes to `attempt-N/generate.log` like any generator's.

use crate::model::{Agent, Allow, NetworkSpec, StageSpec};

/// What an adapter knows about its CLI.
struct Adapter {
    image: &'static str,
    /// The model API, as `host:port`.
    host: &'static str,
    /// The `[secrets]` name it reads its key from (the variable the CLI expects).
    secret: &'static str,
    /// A POSIX shell script run with `sh -c`.
    script: &'static str,
}

/// Prints `agent_prompt` from the job input with whichever interpreter the image has.
const READ_PROMPT_NODE: &str =
    r#"prompt=$(node -e 'process.stdout.write(require(process.env.KILN_JOB_INPUT).agent_prompt)')"#;

const CLAUDE_CODE: Adapter = Adapter {
    image: "kiln/agent-claude-code:latest",
    host: "api.anthropic.com:443",
    secret: "ANTHROPIC_API_KEY",
    script: r#"set -eu
export DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
cd "$KILN_WORKSPACE"
PROMPT_READER
# The container is the sandbox: no network but the proxy, no credentials, no capabilities.
exec claude -p "$prompt" --output-format stream-json --verbose --dangerously-skip-permissions
"#,
};

const CODEX: Adapter = Adapter {
    image: "kiln/agent-codex:latest",
    host: "api.openai.com:443",
    secret: "OPENAI_API_KEY",
    script: r#"set -eu
cd "$KILN_WORKSPACE"
PROMPT_READER
# The container is the sandbox; Codex's own sandbox needs privileges the container lacks.
exec codex exec --json --skip-git-repo-check --dangerously-bypass-approvals-and-sandbox "$prompt"
"#,
};

const AIDER: Adapter = Adapter {
    image: "kiln/agent-aider:latest",
    host: "api.anthropic.com:443",
    secret: "ANTHROPIC_API_KEY",
    script: r#"set -eu
# litellm would fetch its model table from GitHub; the copy it ships is enough.
export LITELLM_LOCAL_MODEL_COST_MAP=True
cd "$KILN_WORKSPACE"
python3 - <<'EOF' > /tmp/kiln-agent-args
import glob, json, os
job = json.load(open(os.environ["KILN_JOB_INPUT"]))
open("/tmp/kiln-agent-prompt", "w").write(job["agent_prompt"])
chosen = [c["path"] for c in job.get("context") or []]
files = sorted({f for g in job["context_files"] for f in glob.glob(g, recursive=True)} | set(chosen))
files = [f for f in files if os.path.isfile(f) and not os.path.islink(f)]
print("\n".join(files))
EOF
set --
while IFS= read -r file; do [ -n "$file" ] && set -- "$@" "$file"; done < /tmp/kiln-agent-args
# Aider's histories go to /tmp, so the workspace holds only the change.
exec aider --yes-always --no-git --no-auto-commits --no-check-update --no-analytics \
  --no-show-model-warnings --no-pretty --no-stream --no-restore-chat-history \
  --chat-history-file /tmp/aider.chat.md --input-history-file /tmp/aider.input.history \
  --message-file /tmp/kiln-agent-prompt "$@"
"#,
};

impl Agent {
    fn adapter(self) -> Option<&'static Adapter> {
        match self {
            Agent::Command => None,
            Agent::ClaudeCode => Some(&CLAUDE_CODE),
            Agent::Codex => Some(&CODEX),
            Agent::Aider => Some(&AIDER),
        }
    }

    /// The `[secrets]` name the agent needs, if any.
    pub fn secret(self) -> Option<&'static str> {
        self.adapter().map(|a| a.secret)
    }
}

/// Fills `spec` from its agent's adapter: the image and network when the job leaves them out,
/// and the argv, which the job must then leave out.
pub(super) fn apply(spec: &mut StageSpec) -> Result<(), String> {
    let Some(adapter) = spec.agent.adapter() else {
        return Ok(());
    };
    if !spec.command.is_empty() {
        return Err(
            "has both `agent` and `command`; the agent's adapter gives the argv (use agent = \"command\" for your own)"
                .into(),
        );
    }
    if spec.image.trim().is_empty() {
        spec.image = adapter.image.into();
    }
    let script = adapter.script.replace("PROMPT_READER", READ_PROMPT_NODE);
    spec.command = vec!["sh".into(), "-c".into(), script];
    if spec.network.is_none() {
        let allow = Allow::parse(adapter.host).expect("an adapter's host is a valid host:port");
        spec.network = Some(NetworkSpec {
            allow: vec![allow],
            secrets: vec![adapter.secret.into()],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> StageSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn an_adapter_fills_image_argv_host_and_secret() {
        let mut s = spec("agent = 'claude-code'");
        apply(&mut s).unwrap();
        assert_eq!(s.image, "kiln/agent-claude-code:latest");
        assert_eq!(s.command[..2], ["sh".to_string(), "-c".to_string()]);
        assert!(s.command[2].contains("claude -p \"$prompt\""));
        assert!(s.command[2].contains("agent_prompt"));
        let network = s.network.unwrap();
        assert_eq!(network.allow[0].to_string(), "api.anthropic.com:443");
        assert_eq!(network.secrets, ["ANTHROPIC_API_KEY"]);

        let mut s = spec("agent = 'codex'\nimage = 'mine/codex:1'");
        apply(&mut s).unwrap();
        assert_eq!(s.image, "mine/codex:1");
        assert_eq!(Agent::Aider.secret(), Some("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn an_adapter_refuses_a_command_of_its_own() {
        let mut s = spec("agent = 'aider'\ncommand = ['sh']");
        assert!(
            apply(&mut s)
                .unwrap_err()
                .contains("both `agent` and `command`")
        );
        let mut s = spec("image = 'x'\ncommand = ['sh']");
        apply(&mut s).unwrap();
        assert_eq!(s.command, ["sh"]);
        assert!(toml::from_str::<StageSpec>("agent = 'gpt'").is_err());
    }
}
