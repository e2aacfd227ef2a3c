//! Web Push against an independent implementation: pywebpush (with http_ece and py_vapid,
//! from PyPI) sending to the fake push service, and Python's http_ece decrypting what Volley's
//! client sent.
//!
//! Needs `WEBPUSH_PYTHON`: a python with the pinned packages, which `scripts/test` installs
//! and exports. Without it these tests fail (they never skip): an interop check that quietly
//! does not run is worse than none.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use volley_fake::{FakeWebPush, FakeWebPushConfig};
use volley_provider::tls::TlsOptions;
use volley_webpush::guard::Guard;
use volley_webpush::vapid::VapidKey;
use volley_webpush::{subscription, Outcome, Prepared, Urgency, WebPushClient, WebPushConfig};

/// pywebpush → fake: signs with py_vapid, encrypts with http_ece (pywebpush's default
/// content encoding, aes128gcm), posts with requests (HTTP/1.1).
const PYWEBPUSH_SEND: &str = r#"
import base64, json, sys
from py_vapid import Vapid02
from pywebpush import webpush, WebPushException

args = json.load(sys.stdin)
vapid = Vapid02()
vapid.generate_keys()
raw = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
# The raw 32-byte key as base64url: what most applications keep in their configuration.
key = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
try:
    response = webpush(
        args["subscription"],
        data=args["data"],
        vapid_private_key=key,
        vapid_claims={"sub": "mailto:interop@example.com"},
        ttl=args["ttl"],
    )
except WebPushException as error:
    response = error.response
print(json.dumps({
    "status": response.status_code,
    "location": response.headers.get("Location"),
    "body": response.text,
}))
"#;

/// Python as the browser: `keys` makes a subscription's key pair and auth secret; `decrypt`
/// opens an aes128gcm body with them (http_ece).
const PYTHON_USER_AGENT: &str = r#"
import base64, json, os, sys
import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

if sys.argv[1] == "keys":
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    print(json.dumps({
        "p256dh": b64(public),
        "auth": b64(os.urandom(16)),
        "private": b64(private.private_numbers().private_value.to_bytes(32, "big")),
    }))
else:
    args = json.load(sys.stdin)
    private = ec.derive_private_key(int.from_bytes(unb64(args["private"]), "big"), ec.SECP256R1())
    plaintext = http_ece.decrypt(
        unb64(args["body"]),
        private_key=private,
        auth_secret=unb64(args["auth"]),
        version="aes128gcm",
    )
    print(json.dumps({"plaintext": b64(plaintext)}))
"#;

/// The python `scripts/test` installs the pinned packages into; fails the test, with what to
/// do, when it is not set or lacks them.
fn python() -> PathBuf {
    let Some(python) = std::env::var_os("WEBPUSH_PYTHON") else {
        panic!(
            "WEBPUSH_PYTHON is not set: run scripts/test, which installs pywebpush and http_ece \
             into a virtualenv and sets it, or set it to a python that has them \
             (python3 -m venv /tmp/wp && /tmp/wp/bin/pip install pywebpush==2.5.0 http_ece==1.2.1; \
             WEBPUSH_PYTHON=/tmp/wp/bin/python)"
        );
    };
    let python = PathBuf::from(python);
    let check = Command::new(&python)
        .args(["-c", "import pywebpush, http_ece, py_vapid, cryptography"])
        .output()
        .unwrap_or_else(|e| panic!("WEBPUSH_PYTHON={} does not run: {e}", python.display()));
    assert!(
        check.status.success(),
        "WEBPUSH_PYTHON={} lacks the Web Push packages (scripts/test installs them): {}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

/// Runs `script` (written to `dir`) with `args`, `stdin` as JSON, and returns its stdout as JSON.
fn run_python(
    python: &Path,
    dir: &Path,
    script: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    stdin: &serde_json::Value,
) -> serde_json::Value {
    let path = dir.join("script.py");
    std::fs::write(&path, script).unwrap();
    let mut child = Command::new(python)
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.to_string().as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn start(dir: &Path) -> FakeWebPush {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = FakeWebPushConfig {
        capture: 10,
        ca_out: Some(dir.join("ca.pem")),
        ..FakeWebPushConfig::default()
    };
    FakeWebPush::start(config, listener).unwrap()
}

#[test]
fn pywebpush_sends_to_the_fake_which_decrypts_exactly_what_was_sent() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let subscription = server.subscription("pywebpush-1");
    let plaintext = r#"{"title":"Grüße","body":"from pywebpush, ünïcödé and all"}"#;

    let reply = run_python(
        &python,
        dir.path(),
        PYWEBPUSH_SEND,
        &[],
        &[("REQUESTS_CA_BUNDLE", server.ca_pem_path())],
        &serde_json::json!({ "subscription": subscription, "data": plaintext, "ttl": 120 }),
    );
    assert_eq!(reply["status"], 201, "the fake refused pywebpush: {reply}");
    assert!(reply["location"]
        .as_str()
        .is_some_and(|l| l.starts_with("/message/")));

    let captured = server.captured_for("pywebpush-1").unwrap();
    assert_eq!(captured.status, 201);
    assert_eq!(captured.headers["content-encoding"], "aes128gcm");
    assert_eq!(captured.headers["authorization"], "vapid");
    assert_eq!(captured.headers["ttl"], "120");
    assert_eq!(captured.version, "HTTP/1.1");
    assert_eq!(
        captured.plaintext.as_deref(),
        Some(plaintext.as_bytes()),
        "the fake decrypted something else than pywebpush encrypted"
    );
    let stats = server.stats();
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.vapid_failures, 0);
    assert_eq!(stats.decrypt_failures, 0);
}

#[test]
fn volleys_client_encrypts_what_python_http_ece_decrypts() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let browser = run_python(
        &python,
        dir.path(),
        PYTHON_USER_AGENT,
        &["keys"],
        &[],
        &serde_json::Value::Null,
    );
    let (p256dh, auth) = (
        browser["p256dh"].as_str().unwrap(),
        browser["auth"].as_str().unwrap(),
    );
    let plaintext = r#"{"title":"Hello","body":"from Volley, ünïcödé too"}"#;

    let body = send_with_volley(&server, "ext-python", p256dh, auth, plaintext.as_bytes());

    let opened = run_python(
        &python,
        dir.path(),
        PYTHON_USER_AGENT,
        &["decrypt"],
        &[],
        &serde_json::json!({
            "private": browser["private"],
            "auth": auth,
            "body": URL_SAFE_NO_PAD.encode(&body),
        }),
    );
    let decrypted = URL_SAFE_NO_PAD
        .decode(opened["plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(decrypted).unwrap(),
        plaintext,
        "http_ece decrypted something else than Volley encrypted"
    );
}

/// Sends `plaintext` with Volley's client to the fake's external subscription `id` (keys the
/// fake does not hold), and returns the body the fake received.
fn send_with_volley(
    server: &FakeWebPush,
    id: &str,
    p256dh: &str,
    auth: &str,
    plaintext: &[u8],
) -> Vec<u8> {
    let token = subscription::encode(&server.endpoint(id), p256dh, auth).unwrap();
    let mut config = WebPushConfig::new(VapidKey::generate(), "mailto:interop@example.com".into());
    config.guard = Guard::new(vec![], vec!["127.0.0.0/8".into()]).unwrap();
    config.tls = TlsOptions {
        extra_ca_pem: Some(server.ca_pem_path().to_path_buf()),
        only_extra_ca: true,
        client_identity: None,
    };
    let client = WebPushClient::new(config).unwrap();
    let prepared = Prepared {
        payload: Bytes::copy_from_slice(plaintext),
        ttl: 60,
        urgency: Some(Urgency::Normal),
        topic: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(client.send(&token, &prepared));
    assert_eq!(
        outcome,
        Outcome::Delivered,
        "the fake did not accept Volley's push"
    );
    let captured = server.captured_for(id).unwrap();
    assert_eq!(captured.status, 201);
    assert_eq!(captured.headers["content-encoding"], "aes128gcm");
    assert_eq!(captured.headers["authorization"], "vapid");
    assert_eq!(captured.headers["ttl"], "60");
    assert_eq!(captured.headers["urgency"], "normal");
    assert_eq!(captured.version, "HTTP/2.0");
    assert_eq!(server.stats().vapid_failures, 0);
    captured
        .body
        .expect("the fake keeps an external subscription's body")
}
