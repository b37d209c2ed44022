//! Default locations (XDG base directories).

use std::path::PathBuf;

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() && PathBuf::from(&v).is_absolute() => PathBuf::from(v),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(fallback)
        }
    }
}

/// `$XDG_STATE_HOME/autonomy/wal` (default `~/.local/state/autonomy/wal`): the daemon's WAL.
pub fn default_wal_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state")
        .join("autonomy")
        .join("wal")
}

/// `$XDG_DATA_HOME/autonomy/policy` (default `~/.local/share/autonomy/policy`): the policy store.
pub fn default_policy_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share")
        .join("autonomy")
        .join("policy")
}

/// `$XDG_STATE_HOME/autonomy/agents.json` (default `~/.local/state/autonomy/agents.json`): the
/// registered agents and their token hashes.
pub fn default_agents_file() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state")
        .join("autonomy")
        .join("agents.json")
}

/// `$XDG_STATE_HOME/autonomy` (default `~/.local/state/autonomy`): the node's own state (its
/// id, keys, the agents file); the daemon's WAL is `wal/` inside it.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("autonomy")
}
