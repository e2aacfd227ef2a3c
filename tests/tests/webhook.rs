//! Invalid-token feedback end to end: the fakes call some tokens dead, the job lists them
//! (paged), and the controller POSTs them to the app's webhook, signed, retrying while the
//! receiver fails, so that the receiver ends up with every invalid token exactly once per job.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use volley_config::{Secret, WebhookConfig};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::{apns_tokens, fcm_tokens};
use volley_testkit::wait::wait_until;

const JOB_LIMIT: Duration = Duration::from_secs(60);
const SECRET: &str = "webhook-test-secret-0123456789";
/// Calls the receiver refuses (500) before it accepts any.
const FAILURES: usize = 3;

/// The receiver's URL, for the cluster's `tweak` (a plain function).
static WEBHOOK_URL: OnceLock<String> = OnceLock::new();

/// What the receiver saw.
#[derive(Default)]
struct Received {
    calls: AtomicUsize,
    bad_signatures: AtomicUsize,
    /// Accepted batches, in arrival order.
    batches: Mutex<Vec<Value>>,
}

/// Checks `t=<seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>` as a receiver would,
/// refusing a time more than five minutes from now (a replayed request).
fn verify(body: &[u8], header: Option<&str>) -> bool {
    let Some((t, hex)) = header
        .and_then(|h| h.strip_prefix("t="))
        .and_then(|h| h.split_once(",v1="))
    else {
        return false;
    };
    let Ok(t) = t.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let signed = [format!("{t}.").as_bytes(), body].concat();
    let body = signed.as_slice();
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, body, &tag).is_ok()
}

async fn receive(
    received: Arc<Received>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let signature = request
        .headers()
        .get("x-volley-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !verify(&body, signature.as_deref()) {
        received.bad_signatures.fetch_add(1, Ordering::SeqCst);
    }
    let call = received.calls.fetch_add(1, Ordering::SeqCst);
    let status = if call < FAILURES {
        500
    } else {
        let batch: Value = serde_json::from_slice(&body).unwrap_or_default();
        received.batches.lock().unwrap().push(batch);
        200
    };
    Ok(Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

async fn start_receiver(received: Arc<Received>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/invalid", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| receive(received.clone(), request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_every_invalid_token_once_per_job_despite_failing_first() {
    let received = Arc::new(Received::default());
    WEBHOOK_URL
        .set(start_receiver(received.clone()).await)
        .unwrap();
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        tweak: |config| {
            // Small chunks spread the dead tokens over many reports, and small batches make
            // the controller send several per job.
            config.controller.chunk_size = 10;
            config.apps[0].webhook = Some(WebhookConfig {
                url: WEBHOOK_URL.get().unwrap().clone(),
                secret: Secret::new(SECRET),
                batch_size: 4,
                timeout: Duration::from_secs(5),
                max_backoff: Duration::from_millis(400),
                ca_file: None,
            });
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();

    // The fakes answer 410 Unregistered (APNs) and 404 UNREGISTERED (FCM) to tokens starting
    // with `dead`. Both jobs hold the same dead tokens: each job reports them once.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ids = Vec::new();
    for (job, prefix) in ["0a0a0a0a", "0b0b0b0b"].into_iter().enumerate() {
        let mut apns = apns_tokens(prefix, 40);
        let mut fcm = fcm_tokens(&format!("live{job}"), 40);
        let dead_apns = apns_tokens("deaddead", 7);
        let dead_fcm = fcm_tokens("deaddead", 5);
        // Interleave the dead tokens so that they land in different chunks.
        for (i, token) in dead_apns.iter().enumerate() {
            apns.insert(i * 6, token.clone());
        }
        for (i, token) in dead_fcm.iter().enumerate() {
            fcm.insert(i * 8, token.clone());
        }
        let body = json!({"title": "t", "targets": {"apns": apns, "fcm": fcm}});
        let id = submit(&client, body.to_string()).await.unwrap();
        expected.insert(id.clone(), dead_apns.into_iter().chain(dead_fcm).collect());
        ids.push(id);
    }
    for id in &ids {
        let status = wait_for_job(&client, id, JOB_LIMIT).await.unwrap();
        assert_balanced(&status);
        assert_eq!(count(&status, "invalid"), 12, "{status}");
        assert_eq!(count(&status, "delivered"), 80, "{status}");

        // The paged list holds the same 12 tokens, each once.
        let mut paged = BTreeSet::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let page = client
                .get(&format!(
                    "/v1/jobs/{id}/invalid-tokens?page_size=5&cursor={cursor}"
                ))
                .await
                .unwrap();
            assert_eq!(page.status.as_u16(), 200, "{}", page.body);
            pages += 1;
            for token in page.body["tokens"].as_array().unwrap() {
                assert!(paged.insert(token["token"].as_str().unwrap().to_owned()));
            }
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(&paged, &expected[id]);
    }

    // Every invalid token reaches the receiver, after its first calls failed.
    wait_until(
        JOB_LIMIT,
        "the webhook to receive every invalid token",
        || {
            let received = received.clone();
            async move {
                let batches = received.batches.lock().unwrap();
                batches
                    .iter()
                    .map(|b| b["tokens"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
                    >= 24
            }
        },
    )
    .await
    .unwrap();
    // Give a duplicate the chance to show up: wait until the controller says nothing is
    // pending any more.
    wait_until(JOB_LIMIT, "the outbox to empty", || {
        let client = client.clone();
        async move {
            client
                .get("/stat/app")
                .await
                .map(|r| r.body["webhooks"][0]["pending_batches"] == 0)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();

    assert_eq!(received.bad_signatures.load(Ordering::SeqCst), 0);
    let batches = received.batches.lock().unwrap().clone();
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut batch_ids = BTreeSet::new();
    for batch in &batches {
        assert_eq!(batch["app"], "demo", "{batch}");
        assert!(batch_ids.insert(batch["batch_id"].as_str().unwrap().to_owned()));
        let tokens = batch["tokens"].as_array().unwrap();
        assert!(!tokens.is_empty() && tokens.len() <= 4, "{batch}");
        for token in tokens {
            match token["platform"].as_str().unwrap() {
                "apns" => {
                    assert_eq!(token["reason"], "Unregistered", "{token}");
                    assert!(token["timestamp"].is_u64(), "{token}");
                }
                "fcm" => assert_eq!(token["reason"], "UNREGISTERED", "{token}"),
                other => panic!("platform {other}"),
            }
            got.entry(batch["job"].as_str().unwrap().to_owned())
                .or_default()
                .push(token["token"].as_str().unwrap().to_owned());
        }
    }
    for (job, tokens) in &got {
        let distinct: BTreeSet<String> = tokens.iter().cloned().collect();
        assert_eq!(distinct.len(), tokens.len(), "a token came twice for {job}");
        assert_eq!(&distinct, &expected[job]);
    }
    assert_eq!(got.len(), 2);
    let calls = received.calls.load(Ordering::SeqCst);
    assert_eq!(calls, batches.len() + FAILURES);
    let stat = client.get("/stat/app").await.unwrap().body;
    assert_eq!(stat["webhooks"][0]["failed_attempts"], FAILURES, "{stat}");
    assert_eq!(
        stat["webhooks"][0]["delivered_batches"],
        batches.len(),
        "{stat}"
    );
    println!(
        "{} batches accepted after {FAILURES} refused calls",
        batches.len()
    );
    cluster.shutdown().unwrap();
}
