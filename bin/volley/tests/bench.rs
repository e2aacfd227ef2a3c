//! `volley bench` end to end with tiny workloads: it runs, writes its JSON, and the counts
//! balance. No figure is asserted: the machine's speed is not what these tests check.

use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

fn bench(args: &[&str]) -> Value {
    bench_process(args).0
}

/// Runs `volley bench args…`; returns its JSON and the bench process's pid.
fn bench_process(args: &[&str]) -> (Value, u32) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let plot = dir.path().join("bench.svg");
    let child = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "volley bench {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, pid)
}

fn check_broadcast(report: &Value, tokens: u64) {
    assert_eq!(report["summary"]["balanced"], true, "{report}");
    let run = &report["runs"][0];
    let broadcast = &run["broadcast"];
    assert_eq!(broadcast["accepted"], tokens, "{broadcast}");
    let outcomes = ["delivered", "invalid", "failed", "cancelled"]
        .iter()
        .map(|field| broadcast[field].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(outcomes, tokens, "{broadcast}");
    assert_eq!(
        broadcast["fake_delivered"], broadcast["delivered"],
        "{broadcast}"
    );
    assert_eq!(broadcast["fake_duplicates"], 0, "{broadcast}");
    assert!(run["ceiling"]["delivered"].as_u64().unwrap() > 0, "{run}");
    assert!(run["ratio"].as_f64().unwrap() > 0.0, "{run}");
    assert!(!run["usage"].as_array().unwrap().is_empty(), "{run}");
}

#[test]
fn a_small_standalone_broadcast_balances() {
    let report = bench(&[
        "broadcast",
        "--tokens",
        "2000",
        "--apns-share",
        "0.5",
        "--invalid-every",
        "100",
        "--broadcast-requests",
        "2",
        "--ceiling-tokens",
        "2000",
    ]);
    check_broadcast(&report, 2000);
    assert_eq!(report["runs"][0]["broadcast"]["invalid"], 20, "{report}");
}

#[test]
fn a_small_broadcast_to_processes_balances() {
    let report = bench(&[
        "broadcast",
        "--topology",
        "processes",
        "--agents",
        "2",
        "--tokens",
        "2000",
        "--webpush-share",
        "0.25",
        "--invalid-every",
        "100",
        "--ceiling-tokens",
        "1000",
    ]);
    check_broadcast(&report, 2000);
    // The subscriptions came from the fake push service's process, which decrypted every
    // message sent to them; one in a hundred of every platform's devices was dead.
    let broadcast = &report["runs"][0]["broadcast"];
    assert_eq!(broadcast["webpush_subscriptions"], 500, "{broadcast}");
    assert_eq!(broadcast["invalid"], 20, "{broadcast}");
    let usage = report["runs"][0]["usage"].as_array().unwrap();
    for part in [
        "front",
        "controller",
        "agent-0",
        "agent-1",
        "fake-apns",
        "fake-webpush",
    ] {
        let row = usage.iter().find(|u| u["name"] == part).unwrap();
        assert!(row["peak_rss_bytes"].as_u64().unwrap() > 0, "{row}");
    }
}

/// Needs network namespaces, as the multi-host tests do: root, or unprivileged user namespaces
/// of its own (`volley_testkit::needs_namespaces!`, where the bench inherits them); it fails
/// without, never skips.
#[test]
fn a_small_broadcast_on_hosts_balances_and_reports_each_host() {
    volley_testkit::needs_namespaces!();
    let (report, pid) = bench_process(&[
        "broadcast",
        "--topology",
        "hosts",
        "--agents",
        "2",
        "--tokens",
        "2000",
        "--apns-share",
        "0.5",
        "--invalid-every",
        "100",
        "--ceiling-tokens",
        "1000",
    ]);
    check_broadcast(&report, 2000);
    assert_eq!(report["runs"][0]["broadcast"]["invalid"], 20, "{report}");
    let run = &report["runs"][0];
    let usage = run["usage"].as_array().unwrap();
    for part in [
        "front-0",
        "controller",
        "agent-0",
        "agent-1",
        "fake-apns",
        "fake-fcm",
    ] {
        let row = usage.iter().find(|u| u["name"] == part).unwrap();
        assert!(row["peak_rss_bytes"].as_u64().unwrap() > 0, "{row}");
    }
    // Each host's CPU is the sum of its processes': the fakes share the providers' host.
    let hosts = run["hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["agent-0", "agent-1", "controller", "front-0", "providers"],
        "{run}"
    );
    for host in hosts {
        assert!(host["cpu_s"].as_f64().unwrap() >= 0.0, "{host}");
        assert!(host["cpu_us_per_notification"].as_f64().is_some(), "{host}");
        assert!(host["cores"].as_f64().is_some(), "{host}");
    }
    let providers = hosts.iter().find(|h| h["name"] == "providers").unwrap();
    assert_eq!(
        providers["processes"],
        serde_json::json!(["fake-apns", "fake-fcm"]),
        "{providers}"
    );
    // The hosts account for every process's CPU, and only theirs (the bench is on none).
    let of_hosts: f64 = hosts.iter().map(|h| h["cpu_s"].as_f64().unwrap()).sum();
    let of_processes: f64 = usage
        .iter()
        .filter(|u| u["name"] != "bench")
        .map(|u| u["cpu_s"].as_f64().unwrap())
        .sum();
    assert!((of_hosts - of_processes).abs() < 1e-6, "{run}");
    let summary = &report["summary"]["host_cpu_us_per_notification"];
    for name in names {
        assert!(summary[name].as_f64().is_some(), "{summary}");
    }
    // The namespaces went with the run.
    assert_eq!(
        volley_testkit::hosts::Hosts::leftovers(pid),
        Vec::<String>::new()
    );
}

#[test]
fn a_small_ingest_balances() {
    let report = bench(&[
        "ingest",
        "--connections",
        "4",
        "--requests",
        "200",
        "--no-ceiling",
    ]);
    assert_eq!(report["summary"]["balanced"], true, "{report}");
    let ingest = &report["runs"][0]["ingest"];
    assert_eq!(ingest["accepted_requests"], 200, "{ingest}");
    assert_eq!(ingest["delivered"], 200, "{ingest}");
    assert!(
        ingest["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{ingest}"
    );
}
