//! `autonomy audit verify --from nats://…`: a node's exported records checked away from it,
//! against its signed checkpoints.

use super::*;

#[test]
fn audit_verify_checks_a_nodes_records_in_the_stream() {
    let test = "audit_verify_checks_a_nodes_records_in_the_stream";
    let Some(bin) = nats_server(test) else {
        return;
    };
    let broker = Broker::start(bin);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let keys = tmp.path().join("keys");
    let env = [("XDG_STATE_HOME", p(&state))];
    let k = cli(&["keygen", "--name", "robot-1", "--out", p(&keys)], &env);
    assert_eq!(k.code, 0, "{}", k.all());
    let pubkey = k.stdout.trim().to_string();
    let wal = tmp.path().join("wal");
    let url = broker.url();
    let key_file = keys.join("node.key");
    let mut d = Daemon::start_in(
        &wal,
        &[
            "--demo",
            "--export",
            &url,
            "--node-id",
            "robot-1",
            "--checkpoint-every",
            "3",
            "--node-key",
            p(&key_file),
        ],
        |c| {
            c.env("XDG_STATE_HOME", &state);
        },
    );
    for i in 0..7 {
        let r = d.tool(&format!(
            r#"{{"kind":"tool.echo","params":{{"message":"v {i}"}}}}"#
        ));
        assert_eq!(r.status, 200);
    }
    assert_eq!(d.stop().code(), Some(0));
    let records = wal_records(&wal).len();

    let ok = cli(
        &[
            "audit", "verify", "--from", &url, "--node", "robot-1", "--key", &pubkey,
        ],
        &env,
    );
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(
        ok.all().contains(&format!("records={records}")),
        "every record of the WAL ({records}) was checked: {}",
        ok.all()
    );
    // Another node's key proves nothing about these records.
    let other = cli(
        &[
            "keygen",
            "--name",
            "robot-1",
            "--out",
            p(&tmp.path().join("other")),
        ],
        &[("XDG_STATE_HOME", p(&tmp.path().join("other-state")))],
    );
    let bad = cli(
        &[
            "audit",
            "verify",
            "--from",
            &url,
            "--node",
            "robot-1",
            "--key",
            other.stdout.trim(),
        ],
        &env,
    );
    assert_eq!(bad.code, 1, "{}", bad.all());
    // A node that exported nothing: no records.
    let none = cli(
        &[
            "audit", "verify", "--from", &url, "--node", "robot-2", "--key", &pubkey,
        ],
        &env,
    );
    assert_eq!(none.code, 1, "{}", none.all());
    assert!(none.all().contains("no records"), "{}", none.all());
}
