//! Parses `ros2 launch` process lines into lifecycle events.
//!
//! launch prints, per process it manages:
//! `[INFO] [talker-1]: process started with pid [4242]`
//! `[ERROR] [talker-1]: process has died [pid 4242, exit code -2, cmd '/opt/ros/…/talker --ros-args'].`
//! `[INFO] [talker-1]: process has finished cleanly [pid 4242]`

use std::borrow::Cow;

use crate::record::{LifecycleRecord, ProcessEvent};

/// One lifecycle event read from launch's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// `process started with pid [N]`.
    Started {
        /// launch's name for the process (`talker-1`).
        name: Option<String>,
        /// Its pid.
        pid: i64,
    },
    /// `process has died [pid N, exit code C, cmd '…']`.
    Died {
        /// launch's name for the process.
        name: Option<String>,
        /// Its pid.
        pid: i64,
        /// Its exit code (negative: killed by that signal).
        exit_code: i64,
        /// Its command line.
        cmd: String,
    },
    /// `process has finished cleanly [pid N]`.
    Finished {
        /// launch's name for the process.
        name: Option<String>,
        /// Its pid.
        pid: i64,
    },
}

impl Lifecycle {
    /// The WAL record of this event.
    pub fn record(&self) -> LifecycleRecord<'_> {
        let (event, name, pid) = match self {
            Lifecycle::Started { name, pid } => (ProcessEvent::Started, name, pid),
            Lifecycle::Finished { name, pid } => (ProcessEvent::Finished, name, pid),
            Lifecycle::Died { name, pid, .. } => (ProcessEvent::Died, name, pid),
        };
        let (cmd, exit_code) = match self {
            Lifecycle::Died { exit_code, cmd, .. } => {
                (Some(Cow::Borrowed(cmd.as_str())), Some(*exit_code))
            }
            _ => (None, None),
        };
        LifecycleRecord {
            cmd,
            event,
            exit_code,
            name: name.as_deref().map(Cow::Borrowed),
            pid: *pid,
        }
    }
}

/// Reads a lifecycle event from one output line, if it is one.
pub fn parse(line: &str) -> Option<Lifecycle> {
    let name = process_name(line);
    if let Some(rest) = after(line, "process started with pid [") {
        let pid = rest.split(']').next()?.trim().parse().ok()?;
        return Some(Lifecycle::Started { name, pid });
    }
    if let Some(rest) = after(line, "process has finished cleanly [pid ") {
        let pid = rest.split(']').next()?.trim().parse().ok()?;
        return Some(Lifecycle::Finished { name, pid });
    }
    if let Some(rest) = after(line, "process has died [pid ") {
        let (pid, rest) = rest.split_once(',')?;
        let pid = pid.trim().parse().ok()?;
        let rest = rest.trim_start().strip_prefix("exit code ")?;
        let (code, rest) = rest.split_once(',')?;
        let exit_code = code.trim().parse().ok()?;
        let cmd = rest
            .trim_start()
            .strip_prefix("cmd '")
            .and_then(|c| c.rfind('\'').map(|i| c[..i].to_string()))
            .unwrap_or_default();
        return Some(Lifecycle::Died {
            name,
            pid,
            exit_code,
            cmd,
        });
    }
    None
}

fn after<'a>(line: &'a str, pat: &str) -> Option<&'a str> {
    line.find(pat).map(|i| &line[i + pat.len()..])
}

/// The `[name]` right before `: process …`, e.g. `talker-1` in `[INFO] [talker-1]: process …`.
fn process_name(line: &str) -> Option<String> {
    let head = &line[..line.find("]: process")?];
    let start = head.rfind('[')?;
    let n = &head[start + 1..];
    (!n.is_empty()).then(|| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_launch_lines() {
        assert_eq!(
            parse("[INFO] [talker-1]: process started with pid [4242]"),
            Some(Lifecycle::Started {
                name: Some("talker-1".into()),
                pid: 4242
            })
        );
        assert_eq!(
            parse(
                "[ERROR] [talker-1]: process has died [pid 4242, exit code -2, cmd '/opt/ros/jazzy/lib/demo_nodes_cpp/talker --ros-args -r __node:=talker']."
            ),
            Some(Lifecycle::Died {
                name: Some("talker-1".into()),
                pid: 4242,
                exit_code: -2,
                cmd: "/opt/ros/jazzy/lib/demo_nodes_cpp/talker --ros-args -r __node:=talker".into()
            })
        );
        assert_eq!(
            parse("[INFO] [listener-2]: process has finished cleanly [pid 7]"),
            Some(Lifecycle::Finished {
                name: Some("listener-2".into()),
                pid: 7
            })
        );
        assert_eq!(
            parse("[INFO] [talker-1]: Publishing: 'Hello World: 1'"),
            None
        );
        assert_eq!(
            parse("process has died [pid x, exit code 1, cmd 'a']"),
            None
        );
    }
}
