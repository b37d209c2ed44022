//! Policy bundles, the policy store, `--policy REF` and OCI distribution, against the real
//! binary: `store` (build, load, list, rollback, hot reload, the OPA layout), `oci` (push and
//! pull through a real registry, refs), `signing` (signed bundles, OPA's format), `rollout`
//! (`--policy-watch`: new versions from a registry), `examples` (the example policies' cases),
//! `hostile` (recursion, depth, unbounded reads) and `errors` (every message a user can provoke).

mod errors;
mod examples;
mod hostile;
mod oci;
mod provenance;
mod rollout;
mod signing;
mod store;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Daemon, Out, build_bundle, cli, p, wal_records};

/// Allows `tool.echo` only, saying so.
const ALLOW_ECHO: &str = "package autonomy\n\ndefault allow := false\n\nallow if input.kind == \"tool.echo\"\n\nreason := \"only echo\" if not allow\n";
/// Allows nothing, with its own reason.
const DENY_ECHO: &str = "package autonomy\n\ndefault allow := false\n\nreason := \"echo is switched off by policy B\"\n";

/// `policy load` of `bundle` into `store` (recording in `wal` when given).
fn load(store: &Path, bundle: &Path, wal: Option<&Path>) -> Out {
    let mut args = vec![
        "policy",
        "load",
        "--bundle",
        p(bundle),
        "--policy-dir",
        p(store),
    ];
    if let Some(w) = wal {
        args.extend(["--wal-dir", p(w)]);
    }
    cli(&args, &[])
}

/// `policy pull REF --insecure` (plain HTTP, loopback registries) into `store` (recording in
/// `wal` when given).
fn pull(r: &str, store: &Path, wal: Option<&Path>) -> Out {
    let mut args = vec!["policy", "pull", r, "--insecure", "--policy-dir", p(store)];
    if let Some(w) = wal {
        args.extend(["--wal-dir", p(w)]);
    }
    cli(&args, &[])
}

/// `autonomy run --policy-dir STORE --policy REF true`: how `--policy REF` resolves.
fn run_true(store: &Path, r: &str) -> Out {
    cli(
        &["run", "--policy-dir", p(store), "--policy", r, "true"],
        &[],
    )
}

/// The `policy_ref` of the store's current slot.
fn current_ref(store: &Path) -> String {
    meta(store, "current")["policy_ref"]
        .as_str()
        .expect("policy_ref in meta.json")
        .to_string()
}

/// Asserts that the daemon allows `tool.echo` under a policy whose ref starts with `prefix`.
fn assert_echo_allowed_under(d: &Daemon, prefix: &str) {
    let (st, v) = echo(d);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["policy_ref"].as_str().unwrap_or("").starts_with(prefix),
        "{v}"
    );
}

/// `rego` as `dir/policy.rego`.
fn write_policy(dir: &Path, rego: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("policy.rego"), rego).unwrap();
}

/// `rego` built with `policy build` into `tmp/<name>-<version>.tar.gz`; returns the path.
fn bundle_from(tmp: &Path, name: &str, version: &str, rego: &str) -> PathBuf {
    let dir = tmp.join(format!("src-{name}-{version}"));
    write_policy(&dir, rego);
    let out = tmp.join(format!("{name}-{version}.tar.gz"));
    build_bundle(&dir, &out, version, name);
    out
}

/// The documented bundle hash, computed independently.
fn doc_hash(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    for (n, c) in files {
        if n == "manifest.json" {
            continue;
        }
        h.update(n.as_bytes());
        h.update([0]);
        h.update(c.len().to_string().as_bytes());
        h.update([0]);
        h.update(c);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The bundle hash of a `.tar.gz`, computed independently.
fn hash_of(bytes: &[u8]) -> String {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let n = e.path().unwrap().to_string_lossy().to_string();
        let mut c = Vec::new();
        e.read_to_end(&mut c).unwrap();
        files.insert(n, c);
    }
    doc_hash(&files)
}

/// One archive entry, with a raw name (no path checks).
struct Entry {
    name: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    /// The size the header declares (`data.len()` unless set).
    size: Option<u64>,
}

/// A regular file entry.
fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind: tar::EntryType::Regular,
        data: data.to_vec(),
        size: None,
    }
}

/// An entry of another type, empty (links point at `/etc/passwd`).
fn special(name: &str, kind: tar::EntryType) -> Entry {
    Entry {
        name: name.as_bytes().to_vec(),
        kind,
        data: Vec::new(),
        size: None,
    }
}

/// A `.tar.gz` of `entries`, exactly as given: what a hostile publisher can send.
fn raw_tar(entries: &[Entry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name = [0; 100];
            g.name[..e.name.len()].copy_from_slice(&e.name);
        }
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(e.kind);
        if e.kind == tar::EntryType::Symlink || e.kind == tar::EntryType::Link {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_size(e.size.unwrap_or(e.data.len() as u64));
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A native bundle: `files` plus a `manifest.json` made of `manifest` with the right
/// `bundle_hash` added unless `manifest` has one.
fn native_with(files: &[(&str, &[u8])], manifest: Value) -> Vec<u8> {
    let mut m: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_vec()))
        .collect();
    let mut manifest = manifest;
    if manifest.get("bundle_hash").is_none() {
        manifest["bundle_hash"] = doc_hash(&m).into();
    }
    m.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    let entries: Vec<Entry> = m.iter().map(|(n, c)| file(n, c)).collect();
    raw_tar(&entries)
}

/// A native bundle named `hostile`, version 6.6.6, of `files`, made without `policy build`
/// (which would refuse what these tests feed it).
fn native(files: &[(&str, &[u8])]) -> Vec<u8> {
    native_with(
        files,
        json!({"name": "hostile", "policy_bundle_version": "6.6.6"}),
    )
}

/// SHA-256 over every file under the store's `current/` and `lkg/` (through the symlinks).
fn slots_digest(store: &Path) -> String {
    fn walk(d: &Path, h: &mut Sha256) {
        let mut ents: Vec<_> = match std::fs::read_dir(d) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(_) => {
                h.update(b"<absent>");
                return;
            }
        };
        ents.sort();
        for e in ents {
            h.update(e.file_name().unwrap().as_encoded_bytes());
            if e.is_dir() {
                walk(&e, h);
            } else {
                h.update(std::fs::read(&e).unwrap());
            }
        }
    }
    let mut h = Sha256::new();
    for s in ["current", "lkg"] {
        h.update(s.as_bytes());
        walk(&store.join(s), &mut h);
    }
    hex::encode(h.finalize())
}

/// The `policy` records of the WAL in `dir` with this `event`.
fn policy_events(dir: &Path, event: &str) -> Vec<Value> {
    wal_records(dir)
        .into_iter()
        .filter(|r| r["type"] == "policy" && r["event"] == event)
        .collect()
}

/// A slot's `meta.json`.
fn meta(store: &Path, slot: &str) -> Value {
    serde_json::from_slice(&std::fs::read(store.join(slot).join("meta.json")).unwrap()).unwrap()
}

/// Replaces a slot's bundle by hand (through the slot symlink), as an operator or an older
/// version could, then lets `edit` change its `meta.json`.
fn write_slot(store: &Path, slot: &str, bytes: &[u8], edit: impl FnOnce(&mut Value)) {
    let d = store.join(slot);
    std::fs::write(d.join("bundle.tar.gz"), bytes).unwrap();
    let mut m = meta(store, slot);
    edit(&mut m);
    std::fs::write(d.join("meta.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

/// POSTs `body` to the daemon's /v1/tool: (status, answer).
fn call(d: &Daemon, body: &str) -> (u16, Value) {
    let r = d.tool(body);
    (r.status, r.json())
}

/// A `tool.echo` call.
fn echo(d: &Daemon) -> (u16, Value) {
    call(d, r#"{"kind":"tool.echo","params":{"message":"hi"}}"#)
}

/// A daemon on the policy store `store`, with `extra` flags.
fn store_daemon(store: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--policy-dir", p(store)];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

/// The lines of `s` that are not empty.
fn lines(s: &str) -> Vec<&str> {
    s.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// A FIFO at `path`: a file that would block whoever reads it.
fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}
