//! Each role checks only what it reads: a front starts from a configuration whose apps have
//! no key or service-account files, and an agent given the same file exits with status 64
//! naming the file it lacks.

use std::process::Command;

use volley_testkit::http::FrontClient;
use volley_testkit::procs::spawn;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_needs_no_credential_files_and_an_agent_names_the_missing_one() {
    // The front dials its controller before serving; a bare listener is enough for that.
    let controller = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("front.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
format = "json"

[front]
listen = "127.0.0.1:0"
controller = "{controller}"

[[apps]]
name = "shop"
api_keys = ["front-only-key-0123456789"]
[apps.apns]
topic = "com.example.shop"
[apps.fcm]
"#,
            controller = controller.local_addr().unwrap(),
        ),
    )
    .unwrap();

    // Plain links: the "controller" is a bare listener with no certificate.
    let mut front = spawn(
        std::path::Path::new(BIN),
        &["front", "--insecure-links"],
        Some(&config),
    );
    let addr = front.wait_for("\"addr\":\"");
    let health = FrontClient::new(format!("http://{addr}"), None)
        .get("/healthz")
        .await
        .unwrap();
    assert_eq!(health.status.as_u16(), 200);
    front.child.kill().unwrap();
    front.child.wait().unwrap();

    let check = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg(&config)
            .output()
            .expect("volley runs")
    };
    let front_check = check(&["config", "check", "--role", "front"]);
    assert!(front_check.status.success(), "{front_check:?}");

    for args in [&["agent", "--config"][..], &["config", "check"][..]] {
        let output = check(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains("apps[0].apns.key_file"),
            "{args:?}: {stderr}"
        );
    }
}
