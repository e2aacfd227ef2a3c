//! The HTTP/1.1 floor under the front: what one keep-alive request costs this machine with
//! nothing behind it. The same stack as the front (hyper's HTTP/1.1 server under an axum
//! router, one current-thread runtime), one route that reads the body and answers 202 with a
//! small JSON object, no parsing, no engine.
//!
//! ```sh
//! cargo run --release -p volley-front --example http_floor
//! # prints its address; drive it with the same requests as `volley bench ingest`, e.g.
//! h2load --h1 -c 64 -D 10 -d body.json -H 'content-type: application/json' \
//!     http://127.0.0.1:PORT/v1/apps/bench/notifications
//! # CPU per request: utime + stime of this process (/proc/PID/stat) over the run ÷ requests
//! ```
//!
//! docs/performance.md compares it with the front's CPU per request.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

fn main() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = Router::new().route(
            "/v1/apps/{app}/notifications",
            post(|_body: Bytes| async {
                (
                    StatusCode::ACCEPTED,
                    [("content-type", "application/json")],
                    r#"{"id":"floor","accepted":1,"rejected":0}"#,
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!(
            "listening on {} (pid {})",
            listener.local_addr()?,
            std::process::id()
        );
        axum::serve(listener, app).await
    })
}
