//! The invalid-token webhook from the controller's side: the outbox survives a controller
//! restart (batches the receiver refused before it are sent by the next controller on the same
//! `controller.data_dir`), and `https://` receivers are reached over TLS.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use volley_config::{Secret, WebhookConfig};
use volley_contracts::JobState;

use volley_testkit::controller::{register, serve_agent, shop_config, submit, TestAgent, WAIT};
use volley_testkit::role::spawn_controller;
use volley_testkit::tokens::apns_token;
use volley_testkit::wait::wait_until;

/// A webhook receiver that refuses (503) until `accept` is set.
#[derive(Default)]
struct Receiver {
    accept: AtomicBool,
    refused: AtomicUsize,
    tokens: Mutex<Vec<String>>,
}

async fn serve_receiver(receiver: Arc<Receiver>) -> String {
    serve_receiver_with(receiver, None).await
}

/// Serves the receiver, over TLS when `tls` is given.
async fn serve_receiver_with(
    receiver: Arc<Receiver>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let receiver = receiver.clone();
            let tls = tls.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let receiver = receiver.clone();
                async move {
                    let body: Bytes = BodyExt::collect(request.into_body())
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let status = if receiver.accept.load(Ordering::SeqCst) {
                        let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let mut tokens = receiver.tokens.lock().unwrap();
                        for token in batch["tokens"].as_array().unwrap() {
                            tokens.push(token["token"].as_str().unwrap().to_owned());
                        }
                        200
                    } else {
                        receiver.refused.fetch_add(1, Ordering::SeqCst);
                        503
                    };
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn unacknowledged_batches_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Arc::new(Receiver::default());
    let url = serve_receiver(receiver.clone()).await;
    let agent_addr = serve_agent(TestAgent::default()).await;
    let mut config = shop_config();
    config.controller.data_dir = dir.path().to_path_buf();
    config.controller.chunk_size = 4;
    config.apps[0].webhook = Some(WebhookConfig {
        url,
        secret: Secret::new("0123456789abcdef"),
        batch_size: 3,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
        ca_file: None,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let node = spawn_controller(
        config.clone(),
        listener,
        volley_testkit::role::ops_listener().unwrap(),
        volley_contracts::Links::Insecure,
    )
    .unwrap();

    let tokens: Vec<String> = (0..20)
        .map(|i| {
            let prefix = if i % 3 == 0 { "dead" } else { "0a0a" };
            apns_token(prefix, i)
        })
        .collect();
    let dead: Vec<String> = tokens
        .iter()
        .filter(|t| t.starts_with("dead"))
        .cloned()
        .collect();
    let controller = volley_contracts::connect_controller(addr, &volley_contracts::Links::Insecure)
        .await
        .unwrap();
    register(&controller, agent_addr, 2).await;
    let accepted = submit(&controller, &tokens).await;
    wait_until(WAIT, "the job to finish and the receiver to refuse", || {
        let controller = controller.clone();
        let receiver = receiver.clone();
        async move {
            let status = controller
                .status(tarpc::context::current(), accepted.id, 0)
                .await
                .unwrap()
                .unwrap();
            status.state == JobState::Done && receiver.refused.load(Ordering::SeqCst) >= 2
        }
    })
    .await
    .unwrap();
    let stats = controller
        .stats(tarpc::context::current())
        .await
        .unwrap()
        .unwrap();
    assert!(
        stats.webhooks[0].pending_batches > 0,
        "{:?}",
        stats.webhooks
    );
    assert_eq!(stats.active_jobs, 0);
    assert_eq!(stats.pending_notifications, 0);
    let delivered: u64 = stats
        .outcomes
        .iter()
        .filter(|o| o.outcome == "delivered")
        .map(|o| o.count)
        .sum();
    let invalid: Vec<_> = stats
        .outcomes
        .iter()
        .filter(|o| o.outcome == "invalid")
        .map(|o| (o.reason.as_str(), o.count))
        .collect();
    assert_eq!(delivered, (tokens.len() - dead.len()) as u64);
    assert_eq!(invalid, [("Unregistered", dead.len() as u64)]);
    assert_eq!(stats.job_latency[0].histogram.count, 1);
    drop(controller);
    node.stop().unwrap();

    // The next controller on the same directory; the first one's store may take a moment to
    // let go of its lock.
    receiver.accept.store(true, Ordering::SeqCst);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let path = dir.path().join("volley.redb");
    loop {
        match redb::Database::create(&path) {
            Ok(db) => {
                drop(db);
                break;
            }
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let node = spawn_controller(
        config,
        listener,
        volley_testkit::role::ops_listener().unwrap(),
        volley_contracts::Links::Insecure,
    )
    .unwrap();
    wait_until(WAIT, "the resent batches", || {
        let receiver = receiver.clone();
        let want = dead.len();
        async move { receiver.tokens.lock().unwrap().len() >= want }
    })
    .await
    .unwrap();
    let mut got = receiver.tokens.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, dead, "every invalid token once, after the restart");
    node.stop().unwrap();
}

#[tokio::test]
async fn an_https_receiver_gets_the_batches_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    // A self-signed certificate for 127.0.0.1, trusted through the webhook's ca_file.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_file = dir.path().join("receiver-ca.pem");
    std::fs::write(&ca_file, cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    )
    .unwrap();
    let receiver = Arc::new(Receiver::default());
    receiver.accept.store(true, Ordering::SeqCst);
    let url = serve_receiver_with(
        receiver.clone(),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
    )
    .await;
    assert!(url.starts_with("https://"));
    let agent_addr = serve_agent(TestAgent::default()).await;
    let mut config = shop_config();
    config.controller.data_dir = dir.path().join("data");
    config.apps[0].webhook = Some(WebhookConfig {
        url,
        secret: Secret::new("0123456789abcdef"),
        batch_size: 100,
        timeout: Duration::from_secs(5),
        max_backoff: Duration::from_millis(200),
        ca_file: Some(ca_file),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let node = spawn_controller(
        config,
        listener,
        volley_testkit::role::ops_listener().unwrap(),
        volley_contracts::Links::Insecure,
    )
    .unwrap();
    let controller = volley_contracts::connect_controller(addr, &volley_contracts::Links::Insecure)
        .await
        .unwrap();
    register(&controller, agent_addr, 2).await;
    let tokens = vec![apns_token("dead", 1), apns_token("0a0a", 2)];
    submit(&controller, &tokens).await;
    wait_until(WAIT, "the batch over tls", || {
        let receiver = receiver.clone();
        async move { !receiver.tokens.lock().unwrap().is_empty() }
    })
    .await
    .unwrap();
    assert_eq!(*receiver.tokens.lock().unwrap(), [tokens[0].clone()]);
    drop(controller);
    node.stop().unwrap();
}
