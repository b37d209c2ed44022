//! Signed checkpoints on the command line: `autonomy keygen`, the checkpoint flags of
//! `runtime start`, `wal verify --checkpoint` and `autonomy audit verify`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::checkpoint::task::CheckpointConfig;
use crate::checkpoint::{self, LogMismatch};
use crate::node::NodeId;

/// The node id: `given` (`--node-id`, `AUTONOMY_NODE_ID`), else this machine's (made once into
/// the state directory); the same id the audit export uses.
fn node_id(given: Option<&str>) -> Result<NodeId, String> {
    let given = given
        .map(str::to_string)
        .or_else(|| std::env::var("AUTONOMY_NODE_ID").ok())
        .filter(|s| !s.is_empty());
    NodeId::load_or_create(given.as_deref(), &crate::paths::state_dir().join("node-id"))
        .map_err(|e| format!("cannot read or make the node id: {e}"))
}

/// `autonomy keygen`.
#[derive(Args, Debug)]
pub(super) struct KeygenArgs {
    /// The key's name (the checkpoints' signature lines carry it) [default: the node id]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Where to write node.key and node.pub [default: $XDG_STATE_HOME/autonomy]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Makes the node key; prints the public key on stdout.
pub(super) fn keygen(a: KeygenArgs) -> ExitCode {
    let name = match a.name {
        Some(n) => n,
        None => match node_id(None) {
            Ok(id) => id.to_string(),
            Err(e) => return super::fail(&e),
        },
    };
    if !checkpoint::note::valid_name(&name) {
        return super::usage(&checkpoint::KeyError::BadName(name));
    }
    let dir = a.out.unwrap_or_else(crate::paths::state_dir);
    match checkpoint::keygen(&dir, &name) {
        Ok(kp) => {
            eprintln!(
                "autonomy: wrote the node key {} (private, mode 600) and its public key {}",
                kp.key_file.display(),
                kp.pub_file.display()
            );
            println!("{}", kp.verifier);
            ExitCode::SUCCESS
        }
        Err(e @ checkpoint::KeyFileError::Exists(_)) => super::usage(&e),
        Err(e) => super::fail(&e),
    }
}

/// The checkpoint flags of `runtime start`.
#[derive(Args, Debug, Default)]
pub(super) struct CheckpointArgs {
    /// Sign the WAL head as a checkpoint record after every N records (needs a node key).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Sign the WAL head as a checkpoint record this often, when anything new was written
    /// (e.g. 60s; needs a node key).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub checkpoint_interval: Option<Duration>,
    /// The node key that signs checkpoints [default: $XDG_STATE_HOME/autonomy/node.key, made by
    /// `autonomy keygen`]
    #[arg(long, value_name = "FILE")]
    pub node_key: Option<PathBuf>,
}

/// `--checkpoint-interval`: 10 ms to 24 h.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = match s.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as 60s or 5m: {e}"))?,
    };
    if d < Duration::from_millis(10) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{s:?} is out of range: use 10ms to 24h"));
    }
    Ok(d)
}

/// The checkpointer's config when the flags ask for checkpoints. Without a node key at the
/// default place they are off, and one line says so; a `--node-key` that cannot be read is a
/// usage error.
pub(super) fn config(
    a: &CheckpointArgs,
    node: Option<&str>,
) -> Result<Option<CheckpointConfig>, ExitCode> {
    if a.checkpoint_every.is_none() && a.checkpoint_interval.is_none() {
        if a.node_key.is_some() {
            return Err(super::usage(
                &"--node-key signs nothing by itself: add --checkpoint-every N and/or --checkpoint-interval T",
            ));
        }
        return Ok(None);
    }
    let file = match &a.node_key {
        Some(f) => f.clone(),
        None => {
            let f = checkpoint::default_key_file();
            if !f.exists() {
                eprintln!(
                    "autonomy: checkpoints off: no node key at {} (make one with `autonomy keygen`, or give --node-key)",
                    f.display()
                );
                return Ok(None);
            }
            f
        }
    };
    let (signer, warning) = checkpoint::load_signer(&file).map_err(|e| super::usage(&e))?;
    if let Some(w) = warning {
        eprintln!("autonomy: warning: {w}");
    }
    let origin = node_id(node).map_err(|e| super::usage(&e))?;
    if signer.name() != origin.as_str() {
        // C2SP: the key's name should be the origin; checking works either way.
        eprintln!(
            "autonomy: warning: the node key is named {} but the node id is {origin}: checkpoints name origin {origin} and are signed as {}",
            signer.name(),
            signer.name()
        );
    }
    Ok(Some(CheckpointConfig {
        signer,
        origin: origin.to_string(),
        every: a.checkpoint_every,
        interval: a.checkpoint_interval,
    }))
}

/// `wal verify --checkpoint FILE --key PUB`: the log in `dir` against a signed checkpoint.
pub(super) fn verify_wal(dir: &Path, note_file: &Path, key: &str) -> ExitCode {
    let key = match checkpoint::load_verifier(key) {
        Ok(k) => k,
        Err(e) => return super::fail(&e),
    };
    let note = match read_note(note_file) {
        Ok(n) => n,
        Err(e) => return super::fail(&e),
    };
    let cp = match checkpoint::open(&note, &key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "wal verify: FAILED — checkpoint {}: {e}",
                note_file.display()
            );
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    match checkpoint::verify_log(dir, &cp) {
        Ok(r) => {
            println!(
                "wal verify: OK — records={} segments={} head_seq={} head_hash={}; checkpoint {} size={} root={} matches (signed by {})",
                r.records,
                r.segments,
                r.head_seq,
                r.head_hash,
                cp.origin,
                cp.size,
                cp.root_hash(),
                key.label()
            );
            if let Some(t) = r.torn_tail {
                println!("warning: {t}");
            }
            ExitCode::SUCCESS
        }
        Err(LogMismatch::Damaged(d)) if !d.code.is_damage() => super::fail(&d),
        Err(LogMismatch::Damaged(d)) => {
            eprintln!(
                "wal verify: FAILED — {}; {}",
                d.summary(),
                d.restore_advice()
            );
            ExitCode::from(super::EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!(
                "wal verify: FAILED — checkpoint {} size={}: {e}",
                cp.origin, cp.size
            );
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

/// The signed note in `file`: the note itself, or a checkpoint record as `wal inspect --json`
/// prints it (its `note` is taken). Blank lines after the note are dropped: `jq -r .note` and
/// editors add one.
fn read_note(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(file)
        .and_then(|f| {
            f.take(checkpoint::note::MAX_NOTE as u64 + 1)
                .read_to_string(&mut s)
        })
        .map_err(|e| format!("cannot read the checkpoint {}: {e}", file.display()))?;
    if s.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(s.trim())
            .map_err(|e| format!("{}: not a checkpoint record: {e}", file.display()))?;
        return v
            .get("note")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{}: a JSON object without a `note`", file.display()));
    }
    Ok(format!("{}\n", s.trim_end_matches(['\n', '\r', ' '])))
}

/// `autonomy audit …`.
#[derive(Subcommand, Debug)]
pub(super) enum AuditCmd {
    /// Check a node's exported records: seq contiguous, the hash chain intact, every checkpoint
    /// signed by the node's key and matching the records it signs.
    Verify(AuditVerifyArgs),
}

/// `autonomy audit verify`.
#[derive(Args, Debug)]
pub(super) struct AuditVerifyArgs {
    /// Records, one stored payload per line as `autonomy wal inspect --json` prints them (`-`:
    /// stdin).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    pub from_file: Option<PathBuf>,
    /// The node's exported records in NATS JetStream (nats://HOST:PORT, comma-separated for a
    /// cluster), as `runtime start --export` published them.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// With --from: the node whose records to check (subject autonomy.audit.<ID>).
    #[arg(long, value_name = "ID", requires = "from", required_unless_present_any = ["from_file", "subject"])]
    pub node: Option<String>,
    /// With --from: the subject the node published on, instead of --node.
    #[arg(
        long,
        value_name = "SUBJECT",
        requires = "from",
        conflicts_with = "node"
    )]
    pub subject: Option<String>,
    /// With --from: the stream.
    #[arg(long, value_name = "NAME", default_value = crate::export::DEFAULT_STREAM)]
    pub stream: String,
    /// The node's public key: a file (node.pub) or the key itself (<name>+<id>+<base64>).
    #[arg(long, value_name = "PUB")]
    pub key: String,
}

/// Runs an `audit` subcommand.
pub(super) fn audit(cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify(a) => audit_verify(a),
    }
}

fn audit_verify(a: AuditVerifyArgs) -> ExitCode {
    let key = match checkpoint::load_verifier(&a.key) {
        Ok(k) => k,
        Err(e) => return super::fail(&e),
    };
    let Some(from_file) = a.from_file.clone() else {
        return audit_verify_stream(&a, &key);
    };
    let input: Box<dyn BufRead> = if from_file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(&from_file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                return super::fail(&format!("cannot read {}: {e}", from_file.display()));
            }
        }
    };
    // Lines are split on '\n' only and kept byte for byte: each is a payload as stored.
    let mut read_error = None;
    let lines = input
        .split(b'\n')
        .map_while(|l| match l {
            Ok(l) => Some(l),
            Err(e) => {
                read_error = Some(e);
                None
            }
        })
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let res = crate::audit::verify_stream(lines, &key);
    if let Some(e) = read_error {
        return super::fail(&format!("cannot read {}: {e}", from_file.display()));
    }
    audit_report(res, &key)
}

/// `audit verify --from nats://…`: the node's records as the stream holds them.
fn audit_verify_stream(a: &AuditVerifyArgs, key: &checkpoint::NoteVerifier) -> ExitCode {
    let Some(url) = a.from.as_deref() else {
        return super::usage(&"give --from-file FILE or --from nats://HOST:PORT");
    };
    let subject = match (&a.subject, &a.node) {
        (Some(s), _) => s.clone(),
        (None, Some(n)) => match NodeId::parse(n) {
            Ok(id) => format!("{}.{id}", crate::export::SUBJECT_PREFIX),
            Err(e) => return super::usage(&e),
        },
        (None, None) => return super::usage(&"with --from, give --node ID or --subject SUBJECT"),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return super::fail(&format!("cannot start the async runtime: {e}")),
    };
    let fetched = rt.block_on(crate::export::fetch::fetch(
        url,
        &a.stream,
        &subject,
        std::time::Duration::from_secs(600),
    ));
    match fetched {
        Ok(payloads) => audit_report(crate::audit::verify_stream(payloads.iter(), key), key),
        Err(e) => super::fail(&e),
    }
}

/// Prints the one line `audit verify` ends with, and its exit code.
pub(super) fn audit_report(
    res: Result<crate::audit::StreamReport, crate::audit::StreamFault>,
    key: &checkpoint::NoteVerifier,
) -> ExitCode {
    match res {
        Ok(r) if r.records == 0 => {
            eprintln!("audit verify: FAILED — no records");
            ExitCode::from(super::EXIT_FAILURE)
        }
        Ok(r) => {
            let Some(last) = &r.last_checkpoint else {
                eprintln!(
                    "audit verify: FAILED — records={} seq {}..{}: the chain is intact but no checkpoint in it is signed by {} and checkable, so nothing proves these records are the node's",
                    r.records,
                    r.first_seq,
                    r.head_seq,
                    key.label()
                );
                return ExitCode::from(super::EXIT_FAILURE);
            };
            println!(
                "audit verify: OK — records={} seq {}..{} head_hash={} checkpoints={} (signed by {}; the last signs seq {}, {} records after it not signed yet) duplicates={}",
                r.records,
                r.first_seq,
                r.head_seq,
                r.head_hash,
                r.checkpoints,
                key.label(),
                last.size,
                r.unsigned_tail(),
                r.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("audit verify: FAILED — {f}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}
