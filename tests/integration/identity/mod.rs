//! Who asked, rate limits, human approval and shadow mode (`docs/identity.md`), black-box
//! against the binary: `agent add|list|revoke`, `--auth`, `--limits`, `approve|reject`,
//! `--shadow`.

pub mod approvals;
mod auth;
mod limits;
mod shadow;

use std::path::Path;

use crate::common::*;

/// `autonomy agent add NAME [--operator] --agents FILE`: the token it printed.
pub fn add_agent(file: &Path, name: &str, operator: bool) -> String {
    let mut args = vec!["agent", "add", name, "--agents", p(file)];
    if operator {
        args.push("--operator");
    }
    let out = cli(&args, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let token = out.stdout.trim().to_string();
    assert!(token.starts_with("aut_"), "{}", out.all());
    token
}

/// Writes `src` as `dir/p.rego` and returns `dir` for `--policy`.
pub fn policy_dir(tmp: &Path, name: &str, src: &str) -> std::path::PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.rego"), src).unwrap();
    dir
}
