//! Connection hygiene over real sockets: idle, slow-header and slow-body connections are cut,
//! connections and large bodies over their caps are answered 503, and a normal keep-alive
//! client notices none of it. Timeouts are shortened here; the defaults are production ones.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_testkit::wait::wait_until;

/// The longest any step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Reads one response (head and a `Content-Length` body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("the connection stays readable");
        assert!(n > 0, "closed before a response: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut raw = Raw {
        status,
        head,
        body: Value::Null,
    };
    let length: usize = raw
        .header("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the body in time")
            .unwrap();
        assert!(n > 0, "closed in the body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    if length > 0 {
        raw.body = serde_json::from_slice(&buffer[head_end..head_end + length]).unwrap();
    }
    raw
}

/// Waits until the front closes `stream` (end of file or reset); returns how long it took.
async fn closed(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Err(_) => panic!("the connection is still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

fn submission_head(length: usize) -> String {
    format!(
        "POST /v1/apps/shop/notifications HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer {SHOP_KEY}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    )
}

/// A valid submission of about `bytes` bytes (FCM tokens).
fn submission(bytes: usize) -> Vec<u8> {
    let tokens: Vec<String> = (0..bytes / 20 + 1).map(fcm_token).collect();
    serde_json::to_vec(&json!({"targets": {"fcm": tokens}, "body": "x"})).unwrap()
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header timeout is shorter than the idle one: it must not cut an idle connection.
    let front = Front::start(config(
        "idle_timeout = \"600ms\"\nheader_read_timeout = \"200ms\"",
    ))
    .await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    let idle = closed(&mut stream).await;
    assert!(idle >= Duration::from_millis(600), "closed after {idle:?}");
}

#[tokio::test]
async fn slow_or_missing_request_heads_are_cut() {
    let front = Front::start(config("header_read_timeout = \"300ms\"")).await;

    // Nothing at all.
    let mut silent = TcpStream::connect(front.addr).await.unwrap();
    let waited = closed(&mut silent).await;
    assert!(
        waited >= Duration::from_millis(300),
        "closed after {waited:?}"
    );

    // A head that never ends: a byte every 50 ms.
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        let mut next: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n";
        loop {
            interval.tick().await;
            if let Err(error) = write.write_all(next).await {
                break error;
            }
            next = b"x";
        }
    });
    let start = Instant::now();
    let mut chunk = [0u8; 256];
    let n = tokio::time::timeout(WAIT, read.read(&mut chunk))
        .await
        .expect("the slow head is cut in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "a slow head gets no answer, only a close");
    assert!(start.elapsed() >= Duration::from_millis(300));
    // The writer stops only when a write fails: the front has closed the connection.
    let _failed: std::io::Error = tokio::time::timeout(WAIT, trickle).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_body_slower_than_the_minimum_rate_is_answered_408() {
    let front = Front::start(config(
        "body_read_timeout = \"300ms\"\nbody_min_bytes_per_second = 1000",
    ))
    .await;
    let body = submission(2000);
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(submission_head(body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    // 10 bytes earn 10 ms: the answer comes once 310 ms have passed without more.
    let answer = read_response(&mut stream).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "request_timeout");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("front.body_min_bytes_per_second"),
        "{message}"
    );
    assert_eq!(answer.header("connection"), Some("close"));
    closed(&mut stream).await;
    assert!(front.submitted().is_empty());

    let metrics = front.get("/metrics", None).await.text();
    for line in [
        "volley_front_rejected_total{reason=\"request_timeout\"} 1",
        "volley_front_requests_total{route=\"notifications\",status=\"408\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn a_body_that_keeps_the_minimum_rate_may_take_longer_than_the_timeout() {
    let front = Front::start(config(
        "body_read_timeout = \"200ms\"\nbody_min_bytes_per_second = 1000",
    ))
    .await;
    let body = submission(2000);
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(submission_head(body.len()).as_bytes())
        .await
        .unwrap();
    // About 4 KB/s for about 600 ms: three times the timeout, four times the minimum rate.
    for part in body.chunks(body.len() / 4 + 1) {
        stream.write_all(part).await.unwrap();
        // The client's own pace, not a wait for the front.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let answer = read_response(&mut stream).await;
    assert_eq!(answer.status, 202, "{answer:?}");
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_closed() {
    let front = Front::start(config("max_connections = 2")).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(front.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut stream).await.status, 200);
        open.push(stream);
    }

    let mut third = TcpStream::connect(front.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut third).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.body["error"]["code"], "busy");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("front.max_connections"), "{message}");
    closed(&mut third).await;

    // A closed connection makes room.
    drop(open.pop());
    let addr = front.addr;
    wait_until(WAIT, "room for a new connection", || async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut stream).await.status == 200
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn large_bodies_over_the_cap_are_answered_503_with_retry_after() {
    let front = Front::start(config("max_large_bodies = 1\nlarge_body_bytes = 1000")).await;
    let large = submission(3000);

    // Holds the one large-body slot: its head is in, its body is not.
    let mut holder = TcpStream::connect(front.addr).await.unwrap();
    holder
        .write_all(submission_head(large.len()).as_bytes())
        .await
        .unwrap();
    holder.write_all(&large[..100]).await.unwrap();

    // Another large body, declared: refused once the holder has taken the slot (until then
    // it is accepted, which is harmless).
    let addr = front.addr;
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None));
    wait_until(WAIT, "a large body to be refused", || {
        let large = large.clone();
        let refused = refused.clone();
        async move {
            let reply = send(
                addr,
                hyper::http::Method::POST,
                "/v1/apps/shop/notifications",
                Some(SHOP_KEY),
                large,
            )
            .await;
            let busy = reply.status == 503;
            *refused.lock().unwrap() = Some(reply);
            busy
        }
    })
    .await
    .unwrap();
    let reply = refused.lock().unwrap().take().unwrap();
    let message = reply.assert_error(503, "busy", None);
    assert!(message.contains("front.max_large_bodies"), "{message}");
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.headers["connection"], "close");

    // Without a declared length it is refused once it passes the threshold.
    let mut chunked = TcpStream::connect(front.addr).await.unwrap();
    let head = format!(
        "POST /v1/apps/shop/notifications HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer {SHOP_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // Past the threshold in one write, without the last chunk: the front reads all of it.
    let mut frames = head.into_bytes();
    for part in large[..1500].chunks(500) {
        frames.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        frames.extend_from_slice(part);
        frames.extend_from_slice(b"\r\n");
    }
    chunked.write_all(&frames).await.unwrap();
    let answer = read_response(&mut chunked).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "busy");

    // Small bodies never wait for a slot.
    let small = front
        .post(
            "/v1/apps/shop/notifications",
            Some(SHOP_KEY),
            &json!({"targets": {"fcm": [fcm_token(1)]}}),
        )
        .await;
    assert_eq!(small.status, 202, "{}", small.text());

    // The holder finishes; its slot is free again.
    holder.write_all(&large[100..]).await.unwrap();
    assert_eq!(read_response(&mut holder).await.status, 202);
    let again = send(
        addr,
        hyper::http::Method::POST,
        "/v1/apps/shop/notifications",
        Some(SHOP_KEY),
        large.clone(),
    )
    .await;
    assert_eq!(again.status, 202, "{}", again.text());
}

#[tokio::test]
async fn a_normal_keep_alive_client_notices_nothing() {
    // Every timeout shorter than the client's whole session.
    let front = Front::start(config(
        "header_read_timeout = \"200ms\"\nbody_read_timeout = \"200ms\"\nidle_timeout = \"1s\"\nmax_large_bodies = 1\nlarge_body_bytes = 1000",
    ))
    .await;
    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let start = Instant::now();
    for i in 0..6 {
        // Large bodies too, one at a time: each frees its slot for the next.
        let body = if i % 2 == 0 {
            submission(100)
        } else {
            submission(3000)
        };
        let request = Request::post("/v1/apps/shop/notifications")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {SHOP_KEY}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 202, "{body:?}");
        // The client's think time between requests, below the idle timeout.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(start.elapsed() > Duration::from_secs(1));
    assert_eq!(front.submitted().len(), 6);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_hold_up_a_drain() {
    let mut front = Front::start(config("shutdown_grace = \"30s\"")).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 200);
    front.shutdown();
    closed(&mut stream).await;
    let stopped = tokio::time::timeout(WAIT, &mut front.task)
        .await
        .expect("the front stops without waiting for its grace period")
        .unwrap();
    assert!(stopped.is_ok(), "{stopped:?}");
}
