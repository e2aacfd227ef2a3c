//! schemathesis against a live `volley standalone` (real processes, fake APNs and FCM): every
//! operation of the OpenAPI document the front serves at `/openapi.json`, with every check —
//! no 5xx, every status, header, content type and body as documented, valid requests accepted
//! and invalid ones refused, authentication enforced, methods the document does not list
//! answered 405.
//!
//! schemathesis comes from PyPI: `scripts/test` installs it into a virtualenv and points
//! `SCHEMATHESIS_BIN` at it (otherwise `st` is looked up on `PATH`). Not a `VOLLEY_*`
//! variable: the processes would read that as configuration. Without it this test
//! fails rather than skip, so a run that says "passed" did run it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use volley_testkit::procs::{ProcCluster, API_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// Examples per operation and phase, and the time budget of the whole run: about a minute
/// and a half on two cores. `SCHEMATHESIS_EXAMPLES` and `SCHEMATHESIS_SECONDS`
/// change them (e.g. for a longer run before a release).
const EXAMPLES: &str = "40";
const SECONDS: &str = "120";
/// A fixed seed makes a failure reproducible; `SCHEMATHESIS_SEED` picks another.
const SEED: &str = "20261204";

/// schemathesis's configuration (`schemathesis.toml`).
const CONFIG: &str = r#"
# Send for the cluster's app: another app's name is refused with 403 before anything else
# is looked at, which would leave the endpoint's own logic untested.
[parameters]
"path.app" = "shop"
"#;

/// A schemathesis hook (`SCHEMATHESIS_HOOKS`) for the two rules JSON Schema cannot say, whose
/// refusals of schema-valid requests it lets through (any other refusal of valid data still
/// fails the run):
/// - `payload_too_large` (422): the notification as rendered for the provider must fit its
///   limit (4096 bytes; 5120 for VoIP), and its size depends on the encoding of every field
///   together;
/// - `idempotency_key_reused` (422): an `Idempotency-Key` already used by another request of
///   the app, which depends on the requests before, not on this one.
///
/// schemathesis draws the same short keys again and again, so that most generated
/// submissions would be such a reuse and never reach the rest of the front: `map_headers`
/// makes each well-formed key unique (a malformed one stays as drawn, to be refused).
/// Replays and reuse have tests of their own (`tests/tests/idempotency.rs`).
const HOOKS: &str = r#"
import json
import re
import uuid
import schemathesis


@schemathesis.hook
def map_headers(context, headers):
    for name in list(headers or {}):
        value = headers[name]
        if name.lower() == "idempotency-key" and isinstance(value, str) \
                and re.fullmatch(r"[\x21-\x7e]{1,255}", value):
            headers[name] = value[:200] + "-" + uuid.uuid4().hex
    return headers


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 422:
        return True
    try:
        code = json.loads(response.content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return True
    if code not in ("payload_too_large", "idempotency_key_reused"):
        return True
    # Tallied for the test's report.
    with open("let-through.txt", "a") as tally:
        tally.write(code + "\n")
    return False
"#;

/// Checks that do not apply to this API, each with why.
///
/// `use_after_free`: DELETE /v1/jobs/{id} cancels a job; it does not delete it. The job's
/// record (state `cancelled`, its counts and invalid tokens) stays readable until
/// `controller.job_retention`, which is what a caller needs after a cancel, so a GET after
/// the DELETE answering 200 is right; the check assumes a DELETE removes the resource.
const EXCLUDED_CHECKS: &str = "use_after_free";

/// The schemathesis executable: `SCHEMATHESIS_BIN`, or `st` on `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("st"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: run the tests with `scripts/test` (it installs \
             schemathesis into a virtualenv under the target directory and sets \
             SCHEMATHESIS_BIN), or set SCHEMATHESIS_BIN to an `st` executable"
        )
    })
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[test]
fn the_http_api_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    let cluster = ProcCluster::standalone(BIN, &[]);
    let config = cluster.dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let hooks = cluster.dir.path().join("schemathesis_hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();
    let schema = format!("{}/openapi.json", cluster.front_url);
    let started = Instant::now();
    let output = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .args(["run", &schema, "--checks", "all"])
        .args(["--exclude-checks", EXCLUDED_CHECKS])
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        .args([
            "--max-examples",
            &setting("SCHEMATHESIS_EXAMPLES", EXAMPLES),
        ])
        .args(["--max-time", &setting("SCHEMATHESIS_SECONDS", SECONDS)])
        .args(["--seed", &setting("SCHEMATHESIS_SEED", SEED)])
        .args(["--workers", "1", "--request-timeout", "30"])
        .args([
            "--generation-database",
            "none",
            "--suppress-health-check",
            "too_slow",
        ])
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .current_dir(cluster.dir.path())
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "{} does not run ({error}): run the tests with `scripts/test`, which installs \
                 schemathesis",
                st.display()
            )
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let tally =
        std::fs::read_to_string(cluster.dir.path().join("let-through.txt")).unwrap_or_default();
    let let_through = |code: &str| tally.lines().filter(|line| *line == code).count();
    // Shown by `cargo test -- --nocapture`, and with the failure below.
    println!(
        "schemathesis took {:.0} s; refusals of valid data let through by the hook: {} \
         payload_too_large, {} idempotency_key_reused\n{report}",
        started.elapsed().as_secs_f64(),
        let_through("payload_too_large"),
        let_through("idempotency_key_reused"),
    );
    assert!(
        output.status.success(),
        "schemathesis found the API and its document disagree ({}):\n{report}",
        output.status
    );
}
