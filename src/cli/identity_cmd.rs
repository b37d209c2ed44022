//! `autonomy agent add|list|revoke` (tokens), `autonomy approvals|approve|reject` (calls that
//! wait for a person), and the auth and gate flags `runtime start` and `run` share.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::gate::GateOptions;
use crate::identity::store::{self, StoreError};
use crate::identity::{AuthMode, Authenticator, Identity, Role};
use crate::limits::Limits;
use crate::types::Agent;

/// The name the runtime's own local operator token stands for (`:` keeps it from ever being a
/// registered agent's name).
pub(super) const LOCAL_OPERATOR: &str = "operator:local";
/// The local operator file's name, beside the agents file.
const OPERATOR_FILE: &str = "operator.json";

/// `--agents`, shared by every command that reads or writes the agents file.
#[derive(Args, Debug, Clone)]
pub(crate) struct AgentsFileArg {
    /// The agents file (names, roles and token hashes) [default: $XDG_STATE_HOME/autonomy/agents.json]
    #[arg(long, value_name = "FILE", env = "AUTONOMY_AGENTS_FILE")]
    pub agents: Option<PathBuf>,
}

impl AgentsFileArg {
    pub(crate) fn path(&self) -> PathBuf {
        self.agents
            .clone()
            .unwrap_or_else(crate::paths::default_agents_file)
    }
}

/// `autonomy agent`.
#[derive(Subcommand, Debug)]
pub(crate) enum AgentCmd {
    /// Register an agent and print its bearer token (once: only its hash is stored).
    Add {
        /// The agent's name (`input.agent` in policies): 1-64 of A-Z a-z 0-9 . _ -
        name: String,
        /// May also list, approve and reject calls that wait for approval.
        #[arg(long)]
        operator: bool,
        #[command(flatten)]
        file: AgentsFileArg,
    },
    /// List the registered agents (names, roles, creation times; never tokens).
    List {
        /// One JSON object per agent.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        file: AgentsFileArg,
    },
    /// Remove an agent: its token stops working (a running runtime notices within a second).
    Revoke {
        /// The agent's name.
        name: String,
        #[command(flatten)]
        file: AgentsFileArg,
    },
}

/// Runs `autonomy agent …`.
pub(super) fn agent(cmd: AgentCmd) -> ExitCode {
    match cmd {
        AgentCmd::Add {
            name,
            operator,
            file,
        } => {
            let role = if operator {
                Role::Operator
            } else {
                Role::Agent
            };
            match store::add(&file.path(), &name, role) {
                Ok(token) => {
                    println!("{token}");
                    eprintln!(
                        "autonomy: agent {name:?} ({}) added to {}; the token above is shown only now",
                        role.as_str(),
                        file.path().display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => store_error(&e),
            }
        }
        AgentCmd::List { json, file } => match store::load(&file.path()) {
            Ok(agents) => {
                for a in &agents {
                    if json {
                        println!(
                            "{}",
                            json!({"name": a.name, "role": a.role.as_str(), "created_at": a.created_at})
                        );
                    } else {
                        println!("{:<24} {:<9} {}", a.name, a.role.as_str(), a.created_at);
                    }
                }
                if agents.is_empty() && !json {
                    eprintln!(
                        "autonomy: no agents in {} (add one with `autonomy agent add NAME`)",
                        file.path().display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => store_error(&e),
        },
        AgentCmd::Revoke { name, file } => match store::revoke(&file.path(), &name) {
            Ok(()) => {
                eprintln!("autonomy: agent {name:?} revoked");
                ExitCode::SUCCESS
            }
            Err(e) => store_error(&e),
        },
    }
}

fn store_error(e: &StoreError) -> ExitCode {
    match e {
        StoreError::Io { .. } | StoreError::Random(_) => super::fail(e),
        _ => super::usage(e),
    }
}

/// Who may call the runtime (`runtime start` and `run`).
#[derive(Args, Debug, Clone)]
pub(crate) struct AuthArgs {
    /// off: every caller is anonymous; optional: a valid bearer token names the caller, none
    /// is anonymous; required: every call needs a valid token [default: required when
    /// --listen is not a loopback address, else off (run: optional)]
    #[arg(long, value_name = "MODE", value_parser = AuthMode::parse)]
    pub auth: Option<AuthMode>,
    /// Listen beyond loopback without tokens (auth off). Anyone who can reach the port can act.
    #[arg(long)]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub file: AgentsFileArg,
}

impl AuthArgs {
    /// The authenticator for a runtime listening on `listen`, or the usage error.
    pub(crate) fn authenticator(
        &self,
        loopback: bool,
        default_mode: AuthMode,
        own_token: bool,
    ) -> Result<Authenticator, String> {
        let mode = match (self.auth, self.insecure_no_auth) {
            (Some(m), _) => m,
            (None, true) => AuthMode::Off,
            (None, false) if !loopback => AuthMode::Required,
            (None, false) => default_mode,
        };
        if !loopback && mode != AuthMode::Required && !self.insecure_no_auth {
            return Err(format!(
                "--auth {} beyond loopback lets callers act without a token: pass --insecure-no-auth to mean it, or use --auth required",
                mode.as_str()
            ));
        }
        let a = Authenticator::new(mode, Some(self.file.path())).map_err(|e| e.to_string())?;
        if mode == AuthMode::Required && a.token_count() == 0 && !own_token {
            return Err(format!(
                "--auth required, but no agent has a token in {}: add one with `autonomy agent add NAME`{}",
                self.file.path().display(),
                if loopback {
                    ""
                } else {
                    " (or pass --insecure-no-auth to listen beyond loopback without tokens)"
                }
            ));
        }
        Ok(a)
    }
}

/// Rate limits, shadow mode and approvals (`runtime start` and `run`).
#[derive(Args, Debug, Clone)]
pub(crate) struct GateArgs {
    /// Rate limits per agent and kind (JSON: {"limits": [{"agent", "kind", "per_second",
    /// "burst"}]}); replaces the limits of the policy bundle's data.json.
    #[arg(long, value_name = "FILE")]
    pub limits: Option<PathBuf>,
    /// Shadow mode: evaluate and record what the policy would decide (marked shadow), but allow
    /// every call. For trying a policy on a live system; see `wal inspect --shadow-diff`.
    #[arg(long)]
    pub shadow: bool,
    /// How long a call the policy asks approval for waits before it is denied.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::runtime_cmd::parse_duration)]
    pub approval_timeout: Duration,
}

impl GateArgs {
    /// The gate options, or the usage error of a bad limits file.
    pub(crate) fn options(&self) -> Result<GateOptions, String> {
        let limits = match &self.limits {
            Some(p) => Some(Limits::load(p).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(GateOptions {
            limits,
            shadow: self.shadow,
            approval_timeout: self.approval_timeout,
        })
    }
}

/// A fresh token for this process only (never written to the agents file).
pub(crate) fn ephemeral(
    auth: Authenticator,
    name: &str,
    role: Role,
) -> Result<(Authenticator, String), String> {
    let token = store::new_token().map_err(|e| e.to_string())?;
    let a = auth.with_token(
        &token,
        Identity {
            agent: Agent::new(name),
            role,
        },
    );
    Ok((a, token))
}

/// The local operator file: where a runtime tells `autonomy approve` on this machine its URL
/// and an operator token (mode 0600, so only this user reads it).
pub(crate) struct OperatorFile {
    path: PathBuf,
    token: String,
}

impl OperatorFile {
    /// Writes `url` and `token` beside the agents file.
    pub(crate) fn write(agents: &Path, url: &str, token: &str) -> std::io::Result<OperatorFile> {
        let dir = agents
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let path = dir.join(OPERATOR_FILE);
        let body = json!({"url": url, "token": token, "pid": std::process::id()});
        let mut tmp = tempfile::Builder::new()
            .prefix(".operator")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, body.to_string().as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(OperatorFile {
            path,
            token: token.to_string(),
        })
    }

    /// Removes the file, unless another runtime has written its own since.
    pub(crate) fn remove(self) {
        if let Ok(text) = std::fs::read_to_string(&self.path)
            && text.contains(&self.token)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where `approvals`, `approve` and `reject` reach the runtime.
#[derive(Args, Debug)]
pub(crate) struct ReachArgs {
    /// The runtime's URL [default: from the local operator file a runtime on this machine
    /// wrote, else http://127.0.0.1:7777]
    #[arg(long, value_name = "URL", env = "AUTONOMY_RUNTIME_URL")]
    pub url: Option<String>,
    /// An operator token [default: from the local operator file]
    #[arg(
        long,
        value_name = "TOKEN",
        env = "AUTONOMY_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub file: AgentsFileArg,
}

impl ReachArgs {
    fn resolve(&self) -> Result<(String, String), String> {
        let dir = self.file.path();
        let dir = dir.parent().unwrap_or(Path::new("."));
        let local: Option<Value> = std::fs::read(dir.join(OPERATOR_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let field = |k: &str| {
            local
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let url = self
            .url
            .clone()
            .or_else(|| field("url"))
            .unwrap_or_else(|| "http://127.0.0.1:7777".into());
        let token = self.token.clone().or_else(|| field("token")).ok_or_else(|| {
            format!(
                "no operator token: pass --token (an `autonomy agent add NAME --operator` token), or run this as the user of a runtime on this machine (it writes {})",
                dir.join(OPERATOR_FILE).display()
            )
        })?;
        Ok((url.trim_end_matches('/').to_string(), token))
    }
}

async fn request(
    reach: &ReachArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let (url, token) = reach.resolve()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut req = client
        .request(method, format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the runtime at {url}: {e}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .map_err(|e| format!("the runtime answered {status} with a body that is not JSON: {e}"))?;
    if status.is_success() {
        Ok(v)
    } else {
        let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
        Err(format!("{status}: {msg}"))
    }
}

/// `autonomy approvals`: lists the calls waiting.
pub(super) async fn approvals(reach: ReachArgs, json_out: bool) -> ExitCode {
    match request(&reach, reqwest::Method::GET, "/v1/approvals", None).await {
        Ok(v) => {
            let pending = v
                .get("pending")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for p in &pending {
                if json_out {
                    println!("{p}");
                    continue;
                }
                let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                println!(
                    "{}  {}  agent={} source={} expires={}{}\n    params={}",
                    s("audit_id"),
                    s("kind"),
                    s("agent"),
                    s("source"),
                    s("expires_at"),
                    p.get("reason")
                        .and_then(Value::as_str)
                        .map(|r| format!(" reason={r:?}"))
                        .unwrap_or_default(),
                    p.get("params").cloned().unwrap_or(Value::Null)
                );
            }
            if pending.is_empty() && !json_out {
                eprintln!("autonomy: no calls wait for approval");
            }
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e),
    }
}

/// `autonomy approve|reject AUDIT_ID`.
pub(super) async fn decide(
    reach: ReachArgs,
    audit_id: String,
    approve: bool,
    note: Option<String>,
) -> ExitCode {
    let mut body = json!({"decision": if approve { "approve" } else { "reject" }});
    if let Some(n) = note {
        body["note"] = Value::String(n);
    }
    let path = format!("/v1/approvals/{}", urlencode(&audit_id));
    match request(&reach, reqwest::Method::POST, &path, Some(body)).await {
        Ok(v) => {
            eprintln!(
                "autonomy: {} {} by {}",
                if approve { "approved" } else { "rejected" },
                audit_id,
                v.get("by").and_then(Value::as_str).unwrap_or("?")
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::fail(&e),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
