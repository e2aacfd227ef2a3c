//! The pool against real HTTP/2 servers on loopback: TLS and h2c.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{pool_for, post, Behaviour, Pki, TestServer};

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
    let _ = Duration::ZERO;
}
