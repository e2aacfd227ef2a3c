//! HTTP/2 behaviour: ALPN, the single-stream-until-auth dance, GOAWAY, h2c, stats endpoints.

mod common;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use volley_fake::{keys, FakeConfig, FakeServer};

type Conn = h2::client::Connection<Box<dyn Io>, Bytes>;

/// Runs `fut` while driving `conn`.
async fn driving<F: Future>(conn: &mut Conn, fut: F) -> F::Output {
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => out,
        r = &mut *conn => panic!("connection ended early: {r:?}"),
    }
}

/// Drives `conn` until `check` holds, for at most 5 s.
async fn drive_until(conn: &mut Conn, check: impl Fn(&Conn) -> bool) {
    for _ in 0..500 {
        if check(conn) {
            return;
        }
        driving(conn, tokio::time::sleep(Duration::from_millis(10))).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test]
async fn tls_client_offering_no_alpn_gets_http2() {
    let server = start(FakeConfig::apns());
    let (c, conn) = connect_with(&server, &[]).await;
    tokio::spawn(conn);
    let mut c = c.ready().await.unwrap();
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let reply = send(
        &mut c,
        apns_request(&server, &apns_token("ab", 1), Some(&jwt))
            .body(())
            .unwrap(),
        PAYLOAD,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn h2c_serves_prior_knowledge_http2() {
    let mut config = FakeConfig::apns();
    config.tls = false;
    let server = start(config);
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    let mut c = client(&server).await;
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let reply = send(
        &mut c,
        apns_request(&server, &apns_token("ab", 1), Some(&jwt))
            .body(())
            .unwrap(),
        PAYLOAD,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn one_stream_until_the_first_authorised_request_then_the_real_limit() {
    let mut config = FakeConfig::apns();
    config.single_stream_until_auth = true;
    config.max_concurrent_streams = 50;
    let server = start(config);
    let (c, mut conn) = connect(&server).await;
    drive_until(&mut conn, |conn| conn.max_concurrent_send_streams() == 1).await;

    // Rejected requests do not authorise the connection.
    let mut c = c;
    let reply = driving(
        &mut conn,
        send(
            &mut c,
            apns_request(&server, &apns_token("ab", 1), None)
                .body(())
                .unwrap(),
            PAYLOAD,
        ),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 403);
    assert_eq!(conn.max_concurrent_send_streams(), 1);

    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let burst = async {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let mut c = c.clone();
            let request = apns_request(&server, &apns_token("ab", i), Some(&jwt))
                .body(())
                .unwrap();
            tasks.push(tokio::spawn(async move {
                send(&mut c, request, PAYLOAD).await.status
            }));
        }
        futures::future::join_all(tasks).await
    };
    for status in driving(&mut conn, burst).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    drive_until(&mut conn, |conn| conn.max_concurrent_send_streams() == 50).await;
    // The connection still works after the injected SETTINGS and its swallowed ACK.
    let reply = driving(
        &mut conn,
        send(
            &mut c,
            apns_request(&server, &apns_token("ab", 99), Some(&jwt))
                .body(())
                .unwrap(),
            PAYLOAD,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let stats = server.shutdown();
    assert_eq!(stats.max_open_streams_before_auth, 1);
    assert_eq!(stats.delivered, 11);
}

#[tokio::test]
async fn goaway_after_n_streams_processes_exactly_n() {
    // Both the inline fast path and the per-stream task path (taken when latency is injected).
    goaway_case(volley_fake::Latency::None).await;
    goaway_case(volley_fake::Latency::Fixed(Duration::from_millis(2))).await;
}

async fn goaway_case(latency: volley_fake::Latency) {
    let mut config = FakeConfig::apns();
    config.goaway_after = Some(5);
    config.latency = latency;
    let server = start(config);
    let (c, mut conn, wire) = connect_recording(&server).await;
    let mut c = driving(&mut conn, c.ready()).await.unwrap();
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let mut responses = Vec::new();
    for i in 0..12 {
        let request = apns_request(&server, &apns_token("ab", i), Some(&jwt))
            .body(())
            .unwrap();
        let (response, mut stream) = c.send_request(request, false).unwrap();
        stream.send_data(Bytes::from_static(PAYLOAD), true).unwrap();
        responses.push(response);
    }
    let conn = tokio::spawn(conn);
    let results = futures::future::join_all(responses).await;
    let ok: Vec<bool> = results
        .iter()
        .map(|r| r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK))
        .collect();
    assert_eq!(ok, [vec![true; 5], vec![false; 7]].concat(), "{results:?}");
    for refused in &results[5..] {
        // Failed by GOAWAY (last-stream-id below them) or refused: either way never processed.
        let error = refused.as_ref().unwrap_err();
        assert!(
            error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM),
            "{error:?}"
        );
    }
    // The server closes the connection once the five are answered (the client may see that as a
    // clean end or as a broken pipe while it still writes, depending on timing).
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closes");
    // Every GOAWAY names the fifth stream (id 9) as the last one processed.
    let goaways: Vec<u32> = frames(&wire.lock().unwrap())
        .iter()
        .filter(|f| f.0 == 0x7)
        .map(|f| u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]]) & 0x7fff_ffff)
        .collect();
    assert!(!goaways.is_empty());
    assert!(goaways.iter().all(|&last| last == 9), "{goaways:?}");
    let stats = server.shutdown();
    assert_eq!(stats.delivered, 5);
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.goaways_sent, 1);
}

#[tokio::test]
async fn stats_are_served_over_http2_and_http1() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stats_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        FakeServer::start_with_stats(FakeConfig::apns(), listener, Some(stats_listener)).unwrap();
    let mut c = client(&server).await;
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    send(
        &mut c,
        apns_request(&server, &apns_token("ab", 1), Some(&jwt))
            .body(())
            .unwrap(),
        PAYLOAD,
    )
    .await;

    let reply = send(
        &mut c,
        http::Request::get(format!("{}/stats", server.endpoint()))
            .body(())
            .unwrap(),
        b"",
    )
    .await;
    let over_h2: volley_fake::Stats = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(over_h2.delivered, 1);

    let stats_addr = server.stats_addr().unwrap();
    let over_h1 = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(stats_addr).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert!(over_h1.starts_with("HTTP/1.1 200"), "{over_h1}");
    let json = over_h1.split("\r\n\r\n").nth(1).unwrap();
    let over_h1: volley_fake::Stats = serde_json::from_str(json).unwrap();
    assert_eq!(over_h1.delivered, 1);
    assert_eq!(over_h1.requests, 1);
}

#[test]
fn starts_and_stops_without_a_caller_runtime() {
    let mut config = FakeConfig::fcm();
    let dir = tempfile::tempdir().unwrap();
    config.ca_out = Some(dir.path().join("ca.pem"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = FakeServer::start(config, listener).unwrap();
    assert_eq!(server.ca_pem_path(), dir.path().join("ca.pem"));
    assert_eq!(
        std::fs::read_to_string(server.ca_pem_path()).unwrap(),
        server.ca_pem()
    );
    assert!(server.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(server.token_uri(), format!("{}/token", server.endpoint()));
    assert_eq!(server.shutdown(), volley_fake::Stats::default());
}

#[test]
fn the_temporary_ca_file_lives_as_long_as_the_server() {
    let server = start(FakeConfig::apns());
    let path = server.ca_pem_path().to_path_buf();
    assert!(path.exists());
    drop(server);
    assert!(!path.exists());
}

#[allow(dead_code)]
fn assert_send<T: Send>(_: &T) {}

#[allow(dead_code)]
fn server_is_send(server: &FakeServer) {
    assert_send(server);
}

#[tokio::test]
async fn the_first_settings_advertise_one_stream_on_the_wire() {
    let mut config = FakeConfig::apns();
    config.single_stream_until_auth = true;
    config.max_concurrent_streams = 77;
    let server = start(config);
    let (mut c, mut conn, wire) = connect_recording(&server).await;
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let request = apns_request(&server, &apns_token("ab", 1), Some(&jwt))
        .body(())
        .unwrap();
    let reply = driving(&mut conn, send(&mut c, request, PAYLOAD)).await;
    assert_eq!(reply.status, StatusCode::OK);
    drive_until(&mut conn, |conn| conn.max_concurrent_send_streams() == 77).await;
    // Non-ACK SETTINGS frames carrying MAX_CONCURRENT_STREAMS, in order.
    let limits: Vec<u32> = frames(&wire.lock().unwrap())
        .iter()
        .filter(|f| f.0 == 0x4 && f.1 & 0x1 == 0)
        .flat_map(|f| {
            f.3.chunks_exact(6)
                .filter(|e| e[0] == 0 && e[1] == 3)
                .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(limits, [1, 77]);
}

#[tokio::test]
async fn a_client_certificate_stands_in_for_the_provider_token() {
    let server = start(FakeConfig::apns());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(server.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (c, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut c = c.ready().await.unwrap();
    let reply = send(
        &mut c,
        apns_request(&server, &apns_token("ab", 1), None)
            .body(())
            .unwrap(),
        PAYLOAD,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn latency_delays_each_answer_without_holding_up_the_others() {
    let mut config = FakeConfig::apns();
    config.latency = volley_fake::Latency::Fixed(Duration::from_millis(300));
    let server = start(config);
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let c = client(&server).await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = c.clone();
        let request = apns_request(&server, &apns_token("ab", i), Some(&jwt))
            .body(())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            send(&mut c, request, PAYLOAD).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // Each answer waited (a lower bound, not a performance assertion) ...
    assert!(started.elapsed() >= Duration::from_millis(300));
    // ... while the others were already open: the delays overlapped instead of queueing.
    let stats = server.shutdown();
    assert!(stats.max_open_streams_seen >= 10, "{stats:?}");
}
