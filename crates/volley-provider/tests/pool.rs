//! The pool against real HTTP/2 servers on loopback, over TLS and h2c.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use support::raw::{RawConfig, RawServer};
use support::{pool_for, post, Behaviour, Pki, TestServer};
use volley_provider::{Pool, PoolConfig, SendError};

#[tokio::test]
async fn a_request_over_tls_gets_its_response_and_body() {
    let pki = Pki::new();
    let server = TestServer::start(Some(pki.server_config()), Behaviour::Echo, None).await;
    let pool = pool_for(server.endpoint(), pki.client_tls(), 2);

    let response = pool
        .send(post(1), Bytes::from_static(b"{\"aps\":{}}"))
        .await
        .unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(response.body, Bytes::from_static(b"{\"aps\":{}}"));
    assert!(response.headers.contains_key("x-connection"));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_request_over_h2c_with_an_empty_body_gets_an_empty_response() {
    let server = TestServer::start(None, Behaviour::Echo, None).await;
    let pool = pool_for(server.endpoint(), Default::default(), 1);

    let response = pool.send(post(1), Bytes::new()).await.unwrap();

    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_at_most_n_connections() {
    let pki = Pki::new();
    let server = TestServer::start(Some(pki.server_config()), Behaviour::Echo, None).await;
    let pool = pool_for(server.endpoint(), pki.client_tls(), 3);

    let sends = (0..600).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let body = Bytes::from(format!("request {i}"));
            let response = pool.send(post(i), body.clone()).await.unwrap();
            assert_eq!(response.body, body);
            response.headers["x-connection"]
                .to_str()
                .unwrap()
                .to_string()
        })
    });
    let used: HashSet<String> = join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();

    assert_eq!(server.requests(), 600);
    assert!(
        server.connections() <= 3,
        "{} connections",
        server.connections()
    );
    assert!(used.len() > 1, "all requests went over one connection");
}

/// Sends `n` requests at once; returns the connections (as the server numbers them) used.
async fn burst(pool: &Pool, n: usize) -> Vec<String> {
    let sends = (0..n).map(|i| async move {
        let response = pool.send(post(i), Bytes::from("x")).await.unwrap();
        response.headers["x-connection"]
            .to_str()
            .unwrap()
            .to_string()
    });
    join_all(sends).await
}

#[tokio::test]
async fn a_burst_shares_one_connection_and_a_larger_load_spreads_over_all() {
    let server = TestServer::start(None, Behaviour::Echo, None).await;
    let pool = pool_for(
        server.endpoint(),
        volley_provider::tls::TlsOptions::default(),
        3,
    );
    // 3 turns of 64 requests: every connection is opened, and the next burst starts a turn.
    let warm = burst(&pool, 192).await;
    assert_eq!(warm.iter().collect::<HashSet<_>>().len(), 3);
    let small = burst(&pool, 40).await;
    assert_eq!(
        small.iter().collect::<HashSet<_>>().len(),
        1,
        "a burst of 40 goes over one connection: {small:?}"
    );
    let large = burst(&pool, 300).await;
    assert_eq!(large.iter().collect::<HashSet<_>>().len(), 3);
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn a_limit_of_one_concurrent_stream_is_respected_without_errors() {
    let server = RawServer::start(RawConfig {
        max_concurrent_streams: Some(1),
        batch: 8,
        ..Default::default()
    })
    .await;
    let pool = pool_for(server.endpoint(), Default::default(), 1);

    let sends = (0..50).map(|i| pool.send(post(i), Bytes::from(format!("r{i}"))));
    for result in join_all(sends).await {
        assert_eq!(result.unwrap().status, 200);
    }

    let stats = &server.stats;
    assert_eq!(stats.answered.load(Ordering::SeqCst), 50);
    assert_eq!(stats.violations.load(Ordering::SeqCst), 0);
    assert_eq!(stats.max_open.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_raised_stream_limit_is_used_and_never_exceeded() {
    // APNs allows one stream until it has seen a valid token, then raises the limit.
    let server = RawServer::start(RawConfig {
        max_concurrent_streams: Some(1),
        raise_to: Some(8),
        batch: 8,
        ..Default::default()
    })
    .await;
    let pool = pool_for(server.endpoint(), Default::default(), 1);

    let sends = (0..200).map(|i| pool.send(post(i), Bytes::from(format!("r{i}"))));
    for result in join_all(sends).await {
        assert_eq!(result.unwrap().status, 200);
    }

    let stats = &server.stats;
    assert_eq!(stats.violations.load(Ordering::SeqCst), 0);
    let max_open = stats.max_open.load(Ordering::SeqCst);
    assert!((2..=8).contains(&max_open), "max open streams {max_open}");
}

#[tokio::test]
async fn goaway_mid_batch_loses_and_duplicates_nothing() {
    goaway_mid_batch().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_mid_batch_loses_and_duplicates_nothing_on_a_multi_thread_runtime() {
    goaway_mid_batch().await;
}

async fn goaway_mid_batch() {
    // Both first connections send GOAWAY after 100 requests with streams in flight above the
    // last-stream-id; those must be resent on new connections.
    let server = RawServer::start(RawConfig {
        goaway_after: Some(100),
        goaway_connections: 2,
        ..Default::default()
    })
    .await;
    let pool = pool_for(server.endpoint(), Default::default(), 2);

    let sends = (0..1000).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let body = Bytes::from(format!("notification {i}"));
            let response = pool.send(post(i), body.clone()).await;
            (body, response)
        })
    });
    for result in join_all(sends).await {
        let (body, response) = result.unwrap();
        let response = response.unwrap_or_else(|e| panic!("{body:?}: {e}"));
        assert_eq!(response.body, body);
    }

    let stats = &server.stats;
    assert_eq!(stats.goaways.load(Ordering::SeqCst), 2);
    assert!(
        stats.discarded.load(Ordering::SeqCst) > 0,
        "no stream was above a GOAWAY"
    );
    assert!(stats.connections.load(Ordering::SeqCst) > 2, "no reconnect");
    let bodies = stats.bodies.lock();
    assert_eq!(bodies.len(), 1000);
    assert!(
        bodies.values().all(|n| *n == 1),
        "a request was processed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_over_tls_loses_nothing() {
    let pki = Pki::new();
    let server = TestServer::start(
        Some(pki.server_config()),
        Behaviour::GracefulGoawayAfter(50),
        None,
    )
    .await;
    let pool = pool_for(server.endpoint(), pki.client_tls(), 1);

    let sends = (0..500).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.send(post(i), Bytes::from(format!("n{i}"))).await })
    });
    for result in join_all(sends).await {
        assert_eq!(result.unwrap().unwrap().status, 200);
    }

    // Whatever was in flight when the GOAWAY came, later requests go to a new connection.
    for i in 0..10 {
        let response = pool.send(post(i), Bytes::from_static(b"later")).await;
        assert_eq!(response.unwrap().status, 200);
    }

    assert_eq!(server.stats.goaways.load(Ordering::SeqCst), 1);
    assert_eq!(server.requests(), 510);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_connection_lost_after_the_request_left_is_maybe_sent_and_then_replaced() {
    let server = RawServer::start(RawConfig {
        close_after: Some(1),
        ..Default::default()
    })
    .await;
    let pool = pool_for(server.endpoint(), Default::default(), 1);

    let error = pool
        .send(post(1), Bytes::from_static(b"a"))
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::MaybeSent(_)), "{error}");
    assert!(error.maybe_delivered());

    let response = pool.send(post(2), Bytes::from_static(b"b")).await.unwrap();
    assert_eq!(response.body, Bytes::from_static(b"b"));
    assert_eq!(server.stats.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_stream_is_resent() {
    let server = TestServer::start(None, Behaviour::RefuseFirst(2), None).await;
    let pool = pool_for(server.endpoint(), Default::default(), 2);

    let response = pool.send(post(1), Bytes::from_static(b"x")).await.unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(server.stats.refused.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_stream_refused_more_often_than_allowed_is_not_sent() {
    let server = TestServer::start(None, Behaviour::RefuseFirst(100), None).await;
    let mut config = PoolConfig::new(server.endpoint());
    config.max_resends = 3;
    let pool = Pool::new(config).unwrap();

    let error = pool
        .send(post(1), Bytes::from_static(b"x"))
        .await
        .unwrap_err();

    assert!(matches!(error, SendError::NotSent(_)), "{error}");
    assert!(!error
        .into_outcome()
        .eq(&volley_provider::Outcome::Delivered));
    assert_eq!(server.stats.refused.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(None, Behaviour::Silent, None).await;
    let mut config = PoolConfig::new(server.endpoint());
    config.request_timeout = Duration::from_millis(200);
    let pool = Pool::new(config).unwrap();

    let error = pool
        .send(post(1), Bytes::from_static(b"x"))
        .await
        .unwrap_err();

    assert!(matches!(error, SendError::Timeout(_)), "{error}");
    assert!(error.maybe_delivered());
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error_and_retries_fail_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let pool = pool_for(
        format!("http://{addr}").parse().unwrap(),
        Default::default(),
        1,
    );

    let error = pool.send(post(1), Bytes::new()).await.unwrap_err();
    let SendError::Connect { endpoint, message } = &error else {
        panic!("{error}");
    };
    assert_eq!(endpoint, &addr.to_string());
    assert!(message.contains("tcp connect failed"), "{message}");
    assert!(!error.maybe_delivered());

    // Backing off: the next request fails with the same cause without a new attempt.
    let again = pool.send(post(1), Bytes::new()).await.unwrap_err();
    assert!(again.to_string().contains("tcp connect failed"), "{again}");
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_a_clear_connect_error() {
    let server_pki = Pki::new();
    let other_pki = Pki::new();
    let server = TestServer::start(Some(server_pki.server_config()), Behaviour::Echo, None).await;
    let pool = pool_for(server.endpoint(), other_pki.client_tls(), 1);

    let error = pool.send(post(1), Bytes::new()).await.unwrap_err();

    let message = error.to_string();
    assert!(matches!(error, SendError::Connect { .. }), "{message}");
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
    assert!(message.contains("not trusted"), "{message}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn a_configured_client_certificate_is_presented() {
    let pki = Pki::new();
    let server = TestServer::start(Some(pki.server_config()), Behaviour::Echo, None).await;
    let mut tls = pki.client_tls();
    tls.client_identity = Some(pki.client_identity());
    let pool = pool_for(server.endpoint(), tls, 1);

    pool.send(post(1), Bytes::new()).await.unwrap();

    assert!(server.stats.client_cert_seen.load(Ordering::SeqCst));
}

#[tokio::test]
async fn no_client_certificate_is_presented_unless_configured() {
    let pki = Pki::new();
    let server = TestServer::start(Some(pki.server_config()), Behaviour::Echo, None).await;
    let pool = pool_for(server.endpoint(), pki.client_tls(), 1);

    pool.send(post(1), Bytes::new()).await.unwrap();

    assert!(!server.stats.client_cert_seen.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_server_that_drops_every_connection_does_not_cause_a_reconnect_storm() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
        }
    });
    let pool = pool_for(
        format!("http://{addr}").parse().unwrap(),
        Default::default(),
        2,
    );

    for _ in 0..50 {
        let error = pool.send(post(1), Bytes::new()).await.unwrap_err();
        assert!(matches!(error, SendError::Connect { .. }), "{error}");
    }

    // One attempt per slot, then both back off and requests fail fast.
    let connections = accepted.load(Ordering::SeqCst);
    assert!(
        connections <= 4,
        "{connections} connections for 50 requests"
    );
}

/// Answers every lookup with fixed addresses (or an error) and counts the lookups.
struct FixedResolver {
    answer: Result<Vec<std::net::SocketAddr>, String>,
    lookups: std::sync::atomic::AtomicU64,
    hosts: std::sync::Mutex<Vec<(String, u16)>>,
}

impl volley_provider::Resolve for FixedResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Vec<std::net::SocketAddr>, String>> + Send + 'a,
        >,
    > {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.hosts.lock().unwrap().push((host.to_string(), port));
        Box::pin(async move { self.answer.clone() })
    }
}

#[tokio::test]
async fn a_resolver_decides_where_connections_go_and_addresses_are_tried_in_order() {
    let server = TestServer::start(None, Behaviour::Echo, None).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let resolver = std::sync::Arc::new(FixedResolver {
        answer: Ok(vec![closed, server.addr]),
        lookups: Default::default(),
        hosts: Default::default(),
    });
    // A name that no DNS resolves: only the resolver can lead the pool to the server.
    let mut config = PoolConfig::new(
        format!("http://push.invalid:{}", server.addr.port())
            .parse()
            .unwrap(),
    );
    config.resolver = Some(resolver.clone());
    assert!(format!("{config:?}").contains("resolver: Some(\"custom\")"));
    let pool = Pool::new(config).unwrap();

    let response = pool.send(post(1), Bytes::from_static(b"x")).await.unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(server.requests(), 1);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(
        resolver.hosts.lock().unwrap().as_slice(),
        &[("push.invalid".to_string(), server.addr.port())]
    );
}

#[tokio::test]
async fn a_resolver_refusal_is_a_connect_error_carrying_its_message() {
    let server = TestServer::start(None, Behaviour::Echo, None).await;
    let resolver = std::sync::Arc::new(FixedResolver {
        answer: Err("endpoint host is 127.0.0.1, a loopback address".into()),
        lookups: Default::default(),
        hosts: Default::default(),
    });
    let mut config = PoolConfig::new(server.endpoint());
    config.resolver = Some(resolver);
    let pool = Pool::new(config).unwrap();

    let error = pool.send(post(1), Bytes::new()).await.unwrap_err();

    let SendError::Connect { message, .. } = &error else {
        panic!("{error}");
    };
    assert_eq!(message, "endpoint host is 127.0.0.1, a loopback address");
    assert_eq!(server.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_count_connections_streams_and_one_latency_per_request() {
    let server = TestServer::start(None, Behaviour::Echo, None).await;
    let observed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stats = volley_provider::PoolStats::observed({
        let observed = observed.clone();
        std::sync::Arc::new(move |_| {
            observed.fetch_add(1, Ordering::Relaxed);
        })
    });
    let mut config = PoolConfig::new(server.endpoint());
    config.connections = 2;
    config.stats = stats.clone();
    let pool = Pool::new(config).unwrap();
    let sends = (0..200).map(|i| {
        let pool = pool.clone();
        async move { pool.send(post(i), Bytes::from_static(b"x")).await.unwrap() }
    });
    join_all(sends).await;
    assert_eq!(observed.load(Ordering::Relaxed), 200);
    assert_eq!(stats.streams_in_flight(), 0);
    assert!((1..=2).contains(&stats.connections()), "{stats:?}");
    assert_eq!(pool.stats().connections(), stats.connections());

    // Connections are counted closed when they end (the pool dropped its handles); a request
    // that finds no server has no latency.
    drop(pool);
    wait_for(|| stats.connections() == 0).await;
    let mut config = PoolConfig::new("http://127.0.0.1:1".parse().unwrap());
    config.stats = stats.clone();
    let pool = Pool::new(config).unwrap();
    let refused = pool.send(post(0), Bytes::new()).await;
    assert!(
        matches!(refused, Err(SendError::Connect { .. })),
        "{refused:?}"
    );
    assert_eq!(observed.load(Ordering::Relaxed), 200);
}

/// Polls `done` every 10 ms for at most 5 s.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
