//! `volley certs` as a user runs it: a CA, node certificates, and what it refuses.

use std::process::Command;

use volley_contracts::tls::{NodeIdentity, NodeRole};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

fn volley(args: &[&str]) -> (bool, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn a_ca_issues_node_certificates_that_load_with_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().unwrap();
    let (ok, text) = volley(&["certs", "init", certs_arg]);
    assert!(ok, "{text}");
    // A second init would overwrite the CA every node trusts: refused.
    let (ok, text) = volley(&["certs", "init", certs_arg]);
    assert!(!ok && text.contains("ca.pem"), "{text}");

    for (role, name) in [("controller", "c1"), ("agent", "a1"), ("front", "f1")] {
        let (ok, text) = volley(&["certs", "issue", "--role", role, "--name", name, certs_arg]);
        assert!(ok, "{text}");
        assert!(
            text.contains("[cluster]") && text.contains("cert_file"),
            "{text}"
        );
        let identity = NodeIdentity::from_files(
            &certs.join("ca.pem"),
            &certs.join(format!("{role}-{name}.pem")),
            &certs.join(format!("{role}-{name}-key.pem")),
        )
        .unwrap();
        assert_eq!(identity.role(), role.parse::<NodeRole>().unwrap());
        assert_eq!(identity.name(), name);
    }

    let (ok, text) = volley(&[
        "certs", "issue", "--role", "admin", "--name", "x", certs_arg,
    ]);
    assert!(!ok && text.contains("front, controller or agent"), "{text}");
    let (ok, text) = volley(&[
        "certs", "issue", "--role", "agent", "--name", "Bad Name", certs_arg,
    ]);
    assert!(!ok && text.contains("a-z, 0-9"), "{text}");
    let elsewhere = dir.path().join("empty");
    let (ok, text) = volley(&[
        "certs",
        "issue",
        "--role",
        "agent",
        "--name",
        "a2",
        elsewhere.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("volley certs init"), "{text}");
}
