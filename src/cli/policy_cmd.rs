//! `autonomy policy build|load|list|status|rollback|push|pull`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::policy::dist::bundle;
use crate::policy::dist::file::{self, FileKind};
use crate::policy::dist::oci::{self, OciRef};
use crate::policy::dist::signing::{SigningKey, VerificationKey, alg_name};
use crate::policy::dist::store::{Meta, Slot, Store};
use crate::record::{
    Loaded, PolicyLoaded, PolicyRejected, PolicyRolledBack, RecordBody, Rejected, RolledBack,
};
use crate::wal::{NewRecord, Wal, WalOptions};

/// The policy store directory flag, shared by the subcommands that use the store.
#[derive(Args, Debug, Clone)]
pub(super) struct StoreArgs {
    /// Policy store [default: $XDG_DATA_HOME/autonomy/policy]
    #[arg(long, value_name = "DIR", env = "AUTONOMY_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn store(&self) -> Store {
        Store::new(
            self.policy_dir
                .clone()
                .unwrap_or_else(crate::paths::default_policy_dir),
        )
    }
}

/// The verification key flags, shared by `policy load`, `policy pull` and `runtime start`.
#[derive(Args, Debug, Clone)]
pub(super) struct VerifyArgs {
    /// Accept only bundles signed with this key (a PEM public key: RSA, P-256, P-384 or
    /// Ed25519), in OPA's `.signatures.json` format; unsigned or wrongly signed bundles are
    /// refused.
    #[arg(long, value_name = "PUB.pem", env = "AUTONOMY_VERIFICATION_KEY")]
    pub verification_key: Option<PathBuf>,
    /// The `scope` a signature must carry (OPA's bundle signing scope) [default: none]
    #[arg(
        long,
        value_name = "SCOPE",
        env = "AUTONOMY_VERIFICATION_SCOPE",
        requires = "verification_key"
    )]
    pub verification_scope: Option<String>,
}

impl VerifyArgs {
    /// The key, read; a key file that cannot be used is a usage error.
    pub(super) fn key(&self) -> Result<Option<Arc<VerificationKey>>, ExitCode> {
        let Some(path) = &self.verification_key else {
            return Ok(None);
        };
        match VerificationKey::from_file(path) {
            Ok(k) => Ok(Some(Arc::new(
                k.with_scope(self.verification_scope.clone().unwrap_or_default()),
            ))),
            Err(e) => Err(super::usage(&format!("--verification-key: {e}"))),
        }
    }
}

/// `autonomy policy …`.
#[derive(Subcommand, Debug)]
pub(super) enum PolicyCmd {
    /// Build a reproducible bundle (.tar.gz) from a directory of .rego files (and data.json).
    #[command(disable_version_flag = true)]
    Build(BuildArgs),
    /// Validate a bundle and make it the current policy (the old current becomes lkg).
    Load(LoadArgs),
    /// Show the store's current and lkg slots.
    Status(ShowArgs),
    /// List the store's slots: versions, hashes and where they came from.
    List(ShowArgs),
    /// Make the last-known-good bundle current again (the current one becomes lkg).
    Rollback(RollbackArgs),
    /// Push a bundle to an OCI registry as an artifact.
    Push(PushArgs),
    /// Pull a bundle from an OCI registry, verify it and load it as current.
    Pull(PullArgs),
}

/// `policy build`.
#[derive(Args, Debug)]
pub(super) struct BuildArgs {
    /// Directory with *.rego files and optional data.json files (subdirectories allowed).
    #[arg(long = "in", value_name = "DIR")]
    pub input: PathBuf,
    /// Output file (.tar.gz).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Bundle version (semver, e.g. 1.2.0).
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Bundle name [default: the input directory's name]
    #[arg(long, value_name = "N")]
    pub name: Option<String>,
    /// Runtime versions the bundle works with, e.g. ">=0.1.0 <2.0.0" (operators >=, >, <=, <, =) [default: any]
    #[arg(long, value_name = "C", default_value = "")]
    pub runtime_version: String,
    /// Mark the bundle `"mode": "shadow"`: a runtime records what it would decide, marked
    /// shadow, and allows every call (for trying a policy on a live system).
    #[arg(long)]
    pub shadow: bool,
    /// Sign the bundle with this PEM private key (PKCS#8; PKCS#1 for RSA): writes
    /// `.signatures.json` as `opa build --signing-key` does (RS256, ES256, ES384 or EdDSA, by
    /// the key).
    #[arg(long, value_name = "KEY.pem")]
    pub signing_key: Option<PathBuf>,
    /// Key id written in the signature (`kid` header and `keyid` claim).
    #[arg(long, value_name = "ID", requires = "signing_key")]
    pub key_id: Option<String>,
    /// Scope written in the signature (OPA's `--scope`).
    #[arg(long, value_name = "SCOPE", requires = "signing_key")]
    pub scope: Option<String>,
}

/// `policy load`.
#[derive(Args, Debug)]
pub(super) struct LoadArgs {
    /// The bundle file.
    #[arg(long, value_name = "FILE")]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Record the outcome (`policy.loaded` / `policy.rejected`) in this WAL.
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// `policy status` / `policy list`.
#[derive(Args, Debug)]
pub(super) struct ShowArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// One JSON object per slot instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `policy rollback`.
#[derive(Args, Debug)]
pub(super) struct RollbackArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Record the rollback in this WAL.
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
}

/// `policy push`.
#[derive(Args, Debug)]
pub(super) struct PushArgs {
    /// The bundle file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to: oci://host[:port]/name[:tag].
    #[arg(value_name = "OCI_REF")]
    pub oci_ref: String,
    /// Plain HTTP (loopback registries only).
    #[arg(long)]
    pub insecure: bool,
}

/// `policy pull`.
#[derive(Args, Debug)]
pub(super) struct PullArgs {
    /// What: oci://host[:port]/name[:tag].
    #[arg(value_name = "OCI_REF")]
    pub oci_ref: String,
    /// Plain HTTP (loopback registries only).
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Record the outcome in this WAL.
    #[arg(long, value_name = "DIR")]
    pub wal_dir: Option<PathBuf>,
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Runs one `policy` subcommand.
pub(super) async fn run(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Build(a) => build(a),
        PolicyCmd::Load(a) => load(a),
        PolicyCmd::Status(a) => show(a, true),
        PolicyCmd::List(a) => show(a, false),
        PolicyCmd::Rollback(a) => rollback(a),
        PolicyCmd::Push(a) => push(a).await,
        PolicyCmd::Pull(a) => pull(a).await,
    }
}

fn build(a: BuildArgs) -> ExitCode {
    let name = match a.name {
        Some(n) => n,
        None => std::fs::canonicalize(&a.input)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "bundle".into()),
    };
    let signing_key = match &a.signing_key {
        None => None,
        Some(p) => match SigningKey::from_file(p) {
            Ok(k) => Some(k.with_kid(a.key_id.clone()).with_scope(a.scope.clone())),
            Err(e) => return super::usage(&format!("--signing-key: {e}")),
        },
    };
    let built = match bundle::build(
        &a.input,
        &name,
        &a.version,
        &a.runtime_version,
        a.shadow,
        signing_key.as_ref(),
    ) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("policy build: FAILED — {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    };
    if let Err(e) = write_atomic(&a.out, &built.bytes) {
        eprintln!("policy build: FAILED — {e}");
        return ExitCode::from(super::EXIT_FAILURE);
    }
    let m = &built.manifest;
    println!("policy build: OK");
    println!("  name: {}", m.name);
    println!("  version: {}", m.policy_bundle_version);
    println!("  hash: {}", m.bundle_hash);
    println!(
        "  runtime-version: {}",
        if m.required_runtime_version.is_empty() {
            "any"
        } else {
            &m.required_runtime_version
        }
    );
    if let Some(k) = &signing_key {
        println!(
            "  signature: {}{}",
            alg_name(k.algorithm()),
            k.kid().map(|id| format!(" kid={id}")).unwrap_or_default()
        );
    }
    println!("  output: {}", a.out.display());
    ExitCode::SUCCESS
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Appends a `policy` record to the WAL in `dir` (a warning when that is not possible).
fn record<B: RecordBody>(dir: Option<&Path>, body: &B) {
    let Some(dir) = dir else { return };
    let res = Wal::open(dir, WalOptions::default()).and_then(|(w, _)| {
        w.append(NewRecord::encoded(None, body)?)?;
        w.close()
    });
    if let Err(e) = res {
        eprintln!(
            "autonomy: warning: cannot record the policy event in {}: {e}",
            dir.display()
        );
    }
}

fn rejected(reason: &dyn std::fmt::Display, source: &str, wal: Option<&Path>) -> ExitCode {
    let reason = reason.to_string();
    eprintln!("policy load: REJECTED — {reason}");
    record(
        wal,
        &PolicyRejected {
            event: Rejected,
            policy_ref: None,
            reason: Cow::Borrowed(&reason),
            slot: None,
            source: Some(Cow::Borrowed(source)),
        },
    );
    ExitCode::from(super::EXIT_FAILURE)
}

/// Validates `bytes` fully (the signature first, with a key) and installs them as current
/// (old current → lkg).
fn load_bytes(
    bytes: &[u8],
    source: &str,
    store: &Store,
    wal: Option<&Path>,
    key: Option<&VerificationKey>,
) -> ExitCode {
    let b = match bundle::read_bytes(bytes, key) {
        Ok(b) => b,
        Err(e) => return rejected(&e, source, wal),
    };
    if let Err(e) = b.compile() {
        return rejected(&e, source, wal);
    }
    match store.install(bytes, &b, source) {
        Ok(l) => {
            let signature = match &b.signature {
                bundle::Signature::Unsigned => String::new(),
                s => format!(" signature={s}"),
            };
            println!(
                "policy load: OK — version={} hash={}{signature}",
                l.meta.version, l.meta.hash
            );
            if let bundle::Signature::NotVerified { .. } = b.signature {
                eprintln!(
                    "policy load: warning: the bundle is signed, but its signature was not checked (no --verification-key)"
                );
            }
            record(
                wal,
                &PolicyLoaded {
                    event: Loaded,
                    hash: Cow::Borrowed(&l.meta.hash),
                    name: Cow::Borrowed(&l.meta.name),
                    policy_ref: Cow::Borrowed(&l.meta.policy_ref),
                    source: Cow::Borrowed(source),
                    version: Cow::Borrowed(&l.meta.version),
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy load: FAILED — {e}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

fn load(a: LoadArgs) -> ExitCode {
    let source = std::fs::canonicalize(&a.bundle)
        .unwrap_or_else(|_| a.bundle.clone())
        .display()
        .to_string();
    let key = match a.verify.key() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let wal = a.wal_dir.as_deref();
    let bytes = match file::read_capped(&a.bundle, bundle::MAX_COMPRESSED, FileKind::Bundle) {
        Ok(b) => b,
        Err(e) => return rejected(&e, &source, wal),
    };
    load_bytes(&bytes, &source, &a.store.store(), wal, key.as_deref())
}

fn meta_json(slot: Slot, m: Option<&Meta>) -> serde_json::Value {
    match m {
        Some(m) => serde_json::json!({
            "slot": slot.as_str(),
            "name": m.name,
            "version": m.version,
            "hash": m.hash,
            "source": m.source,
            "loaded_at": m.loaded_at,
            "policy_ref": m.policy_ref,
            "signature": m.signature.as_deref().unwrap_or("unsigned"),
        }),
        None => serde_json::json!({"slot": slot.as_str(), "empty": true}),
    }
}

fn show(a: ShowArgs, status: bool) -> ExitCode {
    let store = a.store.store();
    let mut metas = Vec::new();
    for s in [Slot::Current, Slot::Lkg] {
        match store.meta(s) {
            Ok(m) => metas.push((s, m)),
            Err(e) => return super::fail(&e),
        }
    }
    if a.json {
        for (s, m) in &metas {
            println!("{}", meta_json(*s, m.as_ref()));
        }
        return ExitCode::SUCCESS;
    }
    if status {
        println!("policy store: {}", store.dir().display());
        for (s, m) in &metas {
            match m {
                Some(m) => println!(
                    "{}: {} version={} hash={} source={} loaded_at={} signature={}",
                    s.as_str(),
                    m.name,
                    m.version,
                    m.hash,
                    m.source,
                    m.loaded_at,
                    m.signature.as_deref().unwrap_or("unsigned")
                ),
                None => println!("{}: none", s.as_str()),
            }
        }
        if metas[0].1.is_none() {
            println!(
                "no current bundle: `autonomy runtime start` without --policy is DENY-ALL (load one with `autonomy policy load --bundle FILE`)"
            );
        } else if let Err(e) = store.open_slot(Slot::Current, None) {
            println!("current slot is NOT usable: {e}");
            return ExitCode::from(super::EXIT_FAILURE);
        }
    } else {
        println!(
            "{:<8} {:<20} {:<12} {:<71} SOURCE",
            "SLOT", "NAME", "VERSION", "HASH"
        );
        for (s, m) in &metas {
            match m {
                Some(m) => println!(
                    "{:<8} {:<20} {:<12} {:<71} {}",
                    s.as_str(),
                    m.name,
                    m.version,
                    m.hash,
                    m.source
                ),
                None => println!("{:<8} -", s.as_str()),
            }
        }
    }
    ExitCode::SUCCESS
}

fn rollback(a: RollbackArgs) -> ExitCode {
    let store = a.store.store();
    match store.rollback() {
        Ok((cur, lkg)) => {
            println!(
                "policy rollback: OK — current={} version={} hash={}{}",
                cur.name,
                cur.version,
                cur.hash,
                lkg.map(|l| format!(" (lkg is now {} version={})", l.name, l.version))
                    .unwrap_or_default()
            );
            record(
                a.wal_dir.as_deref(),
                &PolicyRolledBack {
                    event: RolledBack,
                    hash: Cow::Borrowed(&cur.hash),
                    policy_ref: Cow::Borrowed(&cur.policy_ref),
                    version: Cow::Borrowed(&cur.version),
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy rollback: FAILED — {e}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

async fn push(a: PushArgs) -> ExitCode {
    let r = match OciRef::parse(&a.oci_ref) {
        Ok(r) => r,
        Err(e) => return super::usage(&e),
    };
    let bytes = match file::read_capped(&a.file, bundle::MAX_COMPRESSED, FileKind::Bundle) {
        Ok(b) => b,
        Err(e) => return super::usage(&e),
    };
    // Only valid bundles leave this machine.
    let refused = |e: &dyn std::fmt::Display| {
        eprintln!("policy push: FAILED — {}: {e}", a.file.display());
        ExitCode::from(super::EXIT_FAILURE)
    };
    let b = match bundle::read_bytes(&bytes, None) {
        Ok(b) => b,
        Err(e) => return refused(&e),
    };
    if let Err(e) = b.compile() {
        return refused(&e);
    }
    match oci::push(&bytes, &b, &r, a.insecure).await {
        Ok(p) => {
            println!(
                "policy push: OK — {r} version={} hash={} digest={}",
                b.version, b.hash, p.digest
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("policy push: FAILED — {e}");
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}

async fn pull(a: PullArgs) -> ExitCode {
    let r = match OciRef::parse(&a.oci_ref) {
        Ok(r) => r,
        Err(e) => return super::usage(&e),
    };
    let key = match a.verify.key() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let source = r.to_string();
    let wal = a.wal_dir.as_deref();
    match oci::pull(&r, a.insecure).await {
        Ok(p) => {
            println!("policy pull: OK — {r} digest={}", p.digest);
            let store = a.store.store();
            let wal = wal.map(Path::to_path_buf);
            tokio::task::spawn_blocking(move || {
                load_bytes(&p.bytes, &source, &store, wal.as_deref(), key.as_deref())
            })
            .await
            .unwrap_or_else(|e| super::fail(&format!("load task failed: {e}")))
        }
        Err(e) => {
            let reason = e.to_string();
            eprintln!("policy pull: FAILED — {reason}");
            record(
                wal,
                &PolicyRejected {
                    event: Rejected,
                    policy_ref: None,
                    reason: Cow::Borrowed(&reason),
                    slot: None,
                    source: Some(Cow::Borrowed(&source)),
                },
            );
            ExitCode::from(super::EXIT_FAILURE)
        }
    }
}
