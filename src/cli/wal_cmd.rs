//! `autonomy wal inspect`, `wal verify` and `wal repair`.
//!
//! `inspect` and `verify` work without the writer's lock, on a WAL a live runtime is writing,
//! and modify nothing. `repair` takes the lock (so never runs under a live runtime) and cuts a
//! damaged log back to its intact records, saving what it cuts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Subcommand, ValueEnum};

use crate::record::RecordType;
use crate::types::AuditId;

use crate::wal::{Reader, StoredRecord, WalDamage};

/// `autonomy wal …`.
#[derive(Subcommand, Debug)]
pub(super) enum WalCmd {
    /// Print the records (a table, or one JSON payload per line with --json).
    Inspect(InspectArgs),
    /// Check every segment header, CRC, seq and the hash chain; print the count and head hash.
    /// With --checkpoint and --key: also prove the log holds exactly what that signed
    /// checkpoint signed (fails on a rewritten or truncated history).
    Verify(VerifyArgs),
    /// Cut a damaged WAL back to its intact records (saving what is cut beside the segment) so
    /// the runtime starts again. Needs the runtime stopped.
    Repair(RepairArgs),
    /// Publish a stopped node's records to NATS JetStream, from the export cursor to the end of
    /// the log (what `runtime start --export` does live); exit 0 once all are acknowledged.
    Export(ExportArgs),
    /// Show how far the audit export has got: the cursor, the WAL's head and the lag.
    ExportStatus(ExportStatusArgs),
}

/// `autonomy wal export`.
#[derive(Args, Debug)]
pub(super) struct ExportArgs {
    /// NATS JetStream: nats://HOST:PORT (several comma-separated for a cluster).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Give up (exit 1) if not everything is acknowledged within this time.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = super::runtime_cmd::parse_duration)]
    pub timeout: Duration,
    /// Where the records go (the node id defaults to the one in the WAL's cursor).
    #[command(flatten)]
    pub target: super::ExportTarget,
}

/// `autonomy wal export-status`.
#[derive(Args, Debug)]
pub(super) struct ExportStatusArgs {
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// One JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `autonomy wal inspect`.
#[derive(Args, Debug)]
pub(super) struct InspectArgs {
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// One JSON payload per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only records of this type.
    #[arg(long = "type", value_name = "T")]
    pub rtype: Option<TypeArg>,
    /// Only records with this audit id.
    #[arg(long, value_name = "ID")]
    pub audit_id: Option<String>,
    /// Only records with seq >= SEQ.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Keep printing new records as they are appended, until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// Only the calls a policy in shadow mode would have denied (or asked approval for), which
    /// were allowed: what enforcing it would change.
    #[arg(long)]
    pub shadow_diff: bool,
}

/// `autonomy wal verify`.
#[derive(Args, Debug)]
pub(super) struct VerifyArgs {
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A signed checkpoint (the note, or its checkpoint record as `wal inspect --json` prints
    /// it): the log must hold exactly the records it signed.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub checkpoint: Option<PathBuf>,
    /// The node's public key for --checkpoint: a file (node.pub) or the key itself.
    #[arg(long, value_name = "PUB", requires = "checkpoint")]
    pub key: Option<String>,
}

/// `autonomy wal repair`.
#[derive(Args, Debug)]
pub(super) struct RepairArgs {
    /// WAL directory [default: $XDG_STATE_HOME/autonomy/wal]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Cut at this byte offset instead: where a record starts, in the segment where the intact
    /// records end, no later than that end.
    #[arg(long, value_name = "OFFSET")]
    pub truncate_at: Option<u64>,
}

/// Runs a `wal` subcommand.
pub(super) fn run(cmd: WalCmd) -> ExitCode {
    match cmd {
        WalCmd::Inspect(a) => inspect(a),
        WalCmd::Verify(a) => verify(a),
        WalCmd::Repair(a) => repair(a),
        WalCmd::Export(a) => export(a),
        WalCmd::ExportStatus(a) => export_status(a),
    }
}

fn export(a: ExportArgs) -> ExitCode {
    let dir = dir_or_default(a.dir);
    let cursor_node = match crate::export::cursor::load(&dir) {
        Ok(c) => c.map(|c| c.node),
        Err(e) => return super::fail(&e),
    };
    let cfg = match a.target.config(&a.to, &dir, cursor_node.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (stream, subject) = (cfg.stream.clone(), cfg.subject.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return super::fail(&format!("cannot start the async runtime: {e}")),
    };
    let out = match rt.block_on(crate::export::export_once(cfg, a.timeout)) {
        Ok(o) => o,
        Err(e) => return super::fail(&e),
    };
    if let Some(t) = &out.torn_tail {
        eprintln!("autonomy: warning: {t}");
    }
    match out.error {
        None if out.acked_seq == out.started_at => {
            println!(
                "wal export: OK — nothing new: acked_seq={} head_seq={} lag=0",
                out.acked_seq, out.head_seq
            );
            ExitCode::SUCCESS
        }
        None => {
            println!(
                "wal export: OK — {} record(s) exported (seq {}..{}) to stream {stream} subject {subject}; acked_seq={} head_seq={} lag=0",
                out.acked_seq - out.started_at,
                out.started_at + 1,
                out.acked_seq,
                out.acked_seq,
                out.head_seq
            );
            ExitCode::SUCCESS
        }
        Some(e) => super::fail(&format!(
            "wal export: {} of {} record(s) exported, stopped at acked_seq={} with {} left: {e}",
            out.acked_seq - out.started_at,
            out.head_seq.saturating_sub(out.started_at),
            out.acked_seq,
            out.head_seq.saturating_sub(out.acked_seq)
        )),
    }
}

fn export_status(a: ExportStatusArgs) -> ExitCode {
    let dir = dir_or_default(a.dir);
    let s = match crate::export::status(&dir) {
        Ok(s) => s,
        Err(e) => return super::fail(&e),
    };
    if a.json {
        return match serde_json::to_string(&s) {
            Ok(j) => {
                println!("{j}");
                ExitCode::SUCCESS
            }
            Err(e) => super::fail(&e),
        };
    }
    match &s.cursor {
        Some(c) => println!(
            "wal export-status: node={} stream={} subject={} acked_seq={} head_seq={} lag={} updated={}",
            c.node, c.stream, c.subject, c.acked_seq, s.head_seq, s.lag, c.updated
        ),
        None => println!(
            "wal export-status: never exported (no {}) head_seq={} lag={}",
            crate::export::CURSOR_FILE,
            s.head_seq,
            s.lag
        ),
    }
    ExitCode::SUCCESS
}

fn repair(a: RepairArgs) -> ExitCode {
    use crate::wal::repair::RepairError;
    let dir = dir_or_default(a.dir);
    let rep = match crate::wal::repair::repair(&dir, a.truncate_at) {
        Ok(r) => r,
        Err(e @ RepairError::BadOffset(_)) => return super::usage(&e.to_string()),
        Err(e) => return super::fail(&e.to_string()),
    };
    if let Some(f) = &rep.found {
        println!("wal repair: found {f}");
    }
    let kept = format!(
        "records={} head_seq={} head_hash={}",
        rep.kept_records, rep.kept_head_seq, rep.kept_head_hash
    );
    if rep.cuts.is_empty() {
        println!("wal repair: nothing to cut; kept everything: {kept}");
        return ExitCode::SUCCESS;
    }
    println!("wal repair: kept {kept}");
    for c in &rep.cuts {
        let seg = c
            .segment
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if c.offset == 0 {
            println!(
                "wal repair: moved segment {seg} ({} bytes) aside as {}",
                c.bytes,
                c.saved_as.display()
            );
        } else {
            println!(
                "wal repair: cut {} bytes of segment {seg} from offset {}, saved as {}",
                c.bytes,
                c.offset,
                c.saved_as.display()
            );
        }
    }
    if let Some(s) = rep.recorded_seq {
        println!(
            "wal repair: recorded the repair as seq {s} (runtime event wal.repaired); the runtime can start"
        );
    }
    ExitCode::SUCCESS
}

fn dir_or_default(d: Option<PathBuf>) -> PathBuf {
    d.unwrap_or_else(crate::paths::default_wal_dir)
}

fn verify(a: VerifyArgs) -> ExitCode {
    let dir = dir_or_default(a.dir);
    if let (Some(cp), Some(key)) = (&a.checkpoint, &a.key) {
        return super::checkpoint_cmd::verify_wal(&dir, cp, key);
    }
    match crate::wal::verify(&dir) {
        Ok(r) => {
            println!(
                "wal verify: OK — records={} segments={} head_seq={} head_hash={}",
                r.records, r.segments, r.head_seq, r.head_hash
            );
            if let Some(t) = r.torn_tail {
                println!("warning: {t}");
            }
            ExitCode::SUCCESS
        }
        Err(d) if d.code.is_damage() => {
            eprintln!(
                "wal verify: FAILED — {}; {}",
                d.summary(),
                d.restore_advice()
            );
            ExitCode::from(super::EXIT_FAILURE)
        }
        Err(d) => super::fail(&d.to_string()),
    }
}

/// `--type`: a record type, its values taken from [`RecordType::ALL`].
#[derive(Debug, Clone, Copy)]
pub(super) struct TypeArg(RecordType);

impl ValueEnum for TypeArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [TypeArg; RecordType::ALL.len()] = {
            let mut out = [TypeArg(RecordType::Decision); RecordType::ALL.len()];
            let mut i = 0;
            while i < out.len() {
                out[i] = TypeArg(RecordType::ALL[i]);
                i += 1;
            }
            out
        };
        &ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

/// A filter over stored records.
struct Filter {
    rtype: Option<RecordType>,
    audit_id: Option<String>,
    since: Option<u64>,
    shadow_diff: bool,
}

/// A shadow-mode decision record that differs from what happened (the call was allowed).
fn shadow_differs(r: &StoredRecord) -> bool {
    let Ok(crate::record::Body::Decision(d)) = r.body() else {
        return false;
    };
    d.shadow == Some(true)
        && (d.decision != crate::types::Decision::Allow
            || d.reason
                .as_deref()
                .is_some_and(|w| w.starts_with("would ask for approval")))
}

impl Filter {
    fn keep(&self, r: &StoredRecord) -> bool {
        self.rtype.is_none_or(|t| r.rtype == t)
            && self
                .audit_id
                .as_deref()
                .is_none_or(|a| r.audit_id.as_ref().map(AuditId::as_str) == Some(a))
            && self.since.is_none_or(|s| r.seq.0 >= s)
            && (!self.shadow_diff || shadow_differs(r))
    }
}

/// The compact summary column: the fields people look for first.
fn summary(r: &StoredRecord) -> String {
    const KEYS: [&str; 14] = [
        "kind",
        "decision",
        "shadow",
        "rules",
        "agent",
        "by",
        "reason",
        "event",
        "line",
        "code",
        "error",
        "policy_ref",
        "size",
        "root",
    ];
    let mut parts = Vec::new();
    if let Some(o) = r.payload.as_object() {
        for k in KEYS {
            if let Some(v) = o.get(k) {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(rules) if k == "rules" => rules_summary(rules),
                    other => other.to_string(),
                };
                parts.push(format!("{k}={s}"));
            }
        }
    }
    let mut s = parts.join(" ");
    if s.chars().count() > 160 {
        s = s.chars().take(157).collect::<String>() + "...";
    }
    s
}

/// A decision's policy rules, compactly: `DEMO-1@demo.rego:8,allow@policy.rego:12` (the
/// METADATA id where the rule has one, else its name).
fn rules_summary(rules: &[serde_json::Value]) -> String {
    let one = |r: &serde_json::Value| {
        let name = r
            .get("id")
            .or_else(|| r.get("rule"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let file = r
            .get("file")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        let line = r
            .get("line")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        format!("{name}@{file}:{line}")
    };
    rules.iter().map(one).collect::<Vec<_>>().join(",")
}

fn print_record(out: &mut impl Write, r: &StoredRecord, json: bool) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", r.raw)
    } else {
        writeln!(
            out,
            "{:>8}  {:<27}  {:<9}  {:<36}  {}",
            r.seq,
            r.ts,
            r.rtype,
            r.audit_id.as_ref().map_or("-", AuditId::as_str),
            summary(r)
        )
    }
}

enum Drain {
    /// Reached the end of the data.
    End,
    /// stdout is gone (e.g. `| head`): stop quietly.
    Closed,
}

fn drain(
    reader: &mut Reader,
    filter: &Filter,
    json: bool,
    out: &mut impl Write,
) -> Result<Drain, WalDamage> {
    while let Some(r) = reader.next_record()? {
        if filter.keep(&r) && print_record(out, &r, json).is_err() {
            return Ok(Drain::Closed);
        }
    }
    if out.flush().is_err() {
        return Ok(Drain::Closed);
    }
    Ok(Drain::End)
}

fn open_reader(dir: &Path, follow: bool) -> Result<Reader, WalDamage> {
    if follow {
        // Following may start before the runtime has created the first segment.
        let mut r = Reader::open_allow_empty(dir)?;
        r.set_live(true);
        Ok(r)
    } else {
        Reader::open(dir)
    }
}

fn inspect(a: InspectArgs) -> ExitCode {
    let dir = dir_or_default(a.dir);
    let filter = Filter {
        rtype: a.rtype.map(|t| t.0),
        audit_id: a.audit_id,
        since: a.since,
        shadow_diff: a.shadow_diff,
    };
    let mut reader = match open_reader(&dir, a.follow) {
        Ok(r) => r,
        Err(d) => return super::fail(&d.to_string()),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !a.json
        && writeln!(
            out,
            "{:>8}  {:<27}  {:<9}  {:<36}  SUMMARY",
            "SEQ", "TIME", "TYPE", "AUDIT_ID"
        )
        .is_err()
    {
        return ExitCode::SUCCESS;
    }
    if !a.follow {
        return match drain(&mut reader, &filter, a.json, &mut out) {
            Ok(_) => {
                if let Some(t) = reader.torn_tail() {
                    eprintln!("autonomy: warning: {}", t.describe());
                }
                ExitCode::SUCCESS
            }
            Err(d) => {
                let _ = out.flush();
                super::fail(&d.to_string())
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return super::fail(&format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                return super::fail(&format!("cannot install signal handlers: {e}"));
            }
        };
        loop {
            match drain(&mut reader, &filter, a.json, &mut out) {
                Ok(Drain::End) => {}
                Ok(Drain::Closed) => return ExitCode::SUCCESS,
                Err(d) => {
                    let _ = out.flush();
                    return super::fail(&d.to_string());
                }
            }
            tokio::select! {
                _ = term.recv() => return ExitCode::SUCCESS,
                _ = int.recv() => return ExitCode::SUCCESS,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
}
