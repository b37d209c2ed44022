//! OCI distribution: push and pull through a real registry (Debian's `docker-registry`), and
//! refs that are refused before anything reaches the network.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::*;
use crate::common::*;

/// Debian's `docker-registry` on a free loopback port, killed on drop.
pub struct Registry {
    child: std::process::Child,
    pub port: u16,
    root: PathBuf,
    cfg: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "/usr/bin/docker-registry is missing: run `.ci/run` (it installs Debian's docker-registry package) or `apt-get install -y docker-registry`"
        );
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = tmp.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Self::spawn(&cfg);
        let mut r = Registry {
            child,
            port,
            root,
            cfg,
            _tmp: tmp,
        };
        r.wait_up();
        r
    }

    fn spawn(cfg: &Path) -> std::process::Child {
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry")
    }

    fn wait_up(&mut self) {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if !up {
            let _ = self.child.kill();
            panic!("docker-registry did not listen on {addr} within 20 s");
        }
        let v2 = http(addr, "GET", "/v2/", None);
        assert_eq!(v2.status, 200, "registry /v2/ answered {}", v2.status);
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.cfg);
        self.wait_up();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn oci_push_pull_roundtrip_on_a_real_registry() {
    let reg = Registry::start();
    let t = tempfile::tempdir().unwrap();
    let a = bundle_from(t.path(), "shipped", "3.1.0", ALLOW_ECHO);
    let r = format!("oci://127.0.0.1:{}/policies/shipped:3.1.0", reg.port);

    // Without --insecure the client speaks TLS to a plain-HTTP registry: fails clearly.
    let o = cli(&["policy", "push", p(&a), &r], &[]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("policy push: FAILED"), "{}", o.all());

    let o = cli(&["policy", "push", p(&a), &r, "--insecure"], &[]);
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(o.stdout.starts_with("policy push: OK"), "{}", o.stdout);
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&a).unwrap()))
    );
    assert!(o.stdout.contains(&digest), "{}", o.stdout);

    // Pull into an empty store, then serve it by its oci ref (offline resolution).
    let store = t.path().join("store");
    let wal = t.path().join("pull-wal");
    let o = pull(&r, &store, Some(&wal));
    assert_eq!(o.code, 0, "{}", o.all());
    assert!(
        o.stdout
            .contains(&format!("policy pull: OK — {r} digest={digest}")),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout
            .contains("policy load: OK — version=3.1.0 hash=sha256:"),
        "{}",
        o.stdout
    );
    assert_eq!(meta(&store, "current")["source"], r.as_str());
    assert_eq!(
        std::fs::read(store.join("current/bundle.tar.gz")).unwrap(),
        std::fs::read(&a).unwrap()
    );
    let o = cli(&["policy", "list", "--policy-dir", p(&store)], &[]);
    assert!(o.stdout.contains(&r), "{}", o.stdout);
    assert_eq!(policy_events(&wal, "policy.loaded").len(), 1);

    let d = store_daemon(&store, &["--policy", &r]);
    assert_echo_allowed_under(&d, "shipped@3.1.0#sha256:");
    drop(d);

    // An absent tag fails clearly and changes nothing.
    let before = slots_digest(&store);
    let absent = format!("oci://127.0.0.1:{}/policies/shipped:9.9.9", reg.port);
    let o = pull(&absent, &store, None);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("policy pull: FAILED — cannot fetch"),
        "{}",
        o.all()
    );
    assert_eq!(slots_digest(&store), before);

    // --insecure is for loopback only.
    let o = pull("oci://registry.example.com/p:1", &store, None);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("only allowed for loopback"),
        "{}",
        o.all()
    );

    // Tamper with the stored blob (same length): the digest check refuses it.
    let hexd = &digest[7..];
    let blob = reg
        .root
        .join("docker/registry/v2/blobs/sha256")
        .join(&hexd[..2])
        .join(hexd)
        .join("data");
    let mut bytes = std::fs::read(&blob).expect("blob in registry storage");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let store2 = t.path().join("store2");
    let o = pull(&r, &store2, None);
    assert_ne!(o.code, 0, "{}", o.all());
    assert!(o.stderr.contains("policy pull: FAILED"), "{}", o.all());
    assert!(o.all().to_lowercase().contains("digest"), "{}", o.all());
    assert!(!store2.join("current").exists());
}

#[test]
fn bad_oci_refs_are_usage_errors_that_say_what_is_wrong() {
    // A loopback listener that counts connections: no bad ref may reach the network.
    let server = LocalServer::start(|_| ok_response("application/json", b"{}"));
    let port = server.addr.port();
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let cases = [
        (
            format!("oci://127.0.0.1:{port}/../../x"),
            "path component \"..\" is not allowed",
        ),
        (
            format!("oci://127.0.0.1:{port}/a/./b:1"),
            "path component \".\" is not allowed",
        ),
        (
            "oci://127.0.0.1:99999/x:y".to_string(),
            "port \"99999\" is not a number from 1 to 65535",
        ),
        (
            "oci://[::1/x".to_string(),
            "unbalanced [ ] around the registry host",
        ),
        (
            format!("oci://user:pw@127.0.0.1:{port}/x"),
            "credentials (user:password@) are not accepted in a ref",
        ),
        (
            format!("oci://127.0.0.1:{port}//x"),
            "the repository path has an empty component",
        ),
        (
            format!("oci://127.0.0.1:{port}/x:bad/tag"),
            "repository component",
        ),
        (
            format!("oci://127.0.0.1:{port}/x:.t"),
            "tag \".t\" is not valid",
        ),
        (
            format!("oci://127.0.0.1:{port}/x@sha256:00"),
            "digest refs (@sha256:…) are not supported",
        ),
    ];
    let a = bundle_from(t.path(), "refs", "1.0.0", ALLOW_ECHO);
    for (r, why) in &cases {
        let want = format!("autonomy: error: invalid OCI ref {r:?}: ");
        for args in [
            vec![
                "policy",
                "pull",
                r.as_str(),
                "--insecure",
                "--policy-dir",
                p(&store),
            ],
            vec!["policy", "push", p(&a), r.as_str(), "--insecure"],
            vec![
                "run",
                "--policy-dir",
                p(&store),
                "--policy",
                r.as_str(),
                "true",
            ],
        ] {
            let o = cli(&args, &[]);
            assert_eq!(o.code, 2, "{args:?}: {}", o.all());
            let l = lines(&o.stderr);
            assert_eq!(l.len(), 1, "{args:?}: {l:?}");
            assert!(l[0].starts_with(&want), "{args:?}: {l:?}");
            assert!(l[0].contains(why), "{args:?}: {l:?} lacks {why:?}");
        }
    }
    assert_eq!(server.hits(), 0, "a bad ref reached the network");
    assert!(!store.join("current").exists());
}
