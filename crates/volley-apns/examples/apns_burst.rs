//! Measures the APNs client's CPU cost per notification against the fake APNs on loopback.
//!
//! `cargo run --release -p volley-apns --example apns_burst -- [tokens] [connections] [in-flight]`
//!
//! The client runs on a current-thread runtime on the main thread and the fake on its own
//! thread, so per-thread CPU times from /proc separate the two (Linux only). The fake verifies
//! the provider token's ES256 signature (once per connection and token).

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use volley_apns::{
    Alert, ApnsAuth, ApnsClient, ApnsConfig, ApnsEndpoint, Notification, Outcome,
    PreparedNotification,
};
use volley_fake::{keys, FakeConfig, FakeServer};
use volley_provider::tls::TlsOptions;
use volley_provider::Endpoint;

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().unwrap());
    let tokens = args.next().unwrap_or(200_000);
    let connections = args.next().unwrap_or(4);
    let in_flight = args.next().unwrap_or(400);

    let key = keys::generate_apns_key();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = FakeConfig {
        apns_jwt_public_key_pem: Some(key.public_pem.clone()),
        apns_topic: Some("com.example.volley".into()),
        ..FakeConfig::apns()
    };
    let fake = FakeServer::start(config, listener).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ApnsClient::new(ApnsConfig {
            connections,
            request_timeout: Duration::from_secs(30),
            tls: TlsOptions {
                extra_ca_pem: Some(fake.ca_pem_path().to_path_buf()),
                only_extra_ca: true,
                client_identity: None,
            },
            ..ApnsConfig::new(
                ApnsEndpoint::Custom(fake.endpoint().parse::<Endpoint>().unwrap()),
                ApnsAuth::Token {
                    key_pem: key.private_pem.clone(),
                    key_id: "KEY1234567".into(),
                    team_id: "TEAM123456".into(),
                },
            )
        })
        .unwrap();
        let notification = Notification {
            topic: "com.example.volley".into(),
            alert: Some(Alert {
                title: Some("Hello".into()),
                body: Some("A notification body of an ordinary length.".into()),
                ..Alert::default()
            }),
            sound: Some("default".into()),
            ..Notification::default()
        }
        .prepare()
        .unwrap();
        let token = |i: usize| format!("aa{i:062x}");
        // Warm up: connections, and the fake's stream limit raised after the first request.
        let warm: Vec<_> = stream::iter(0..connections * 4)
            .map(|i| send(&client, token(usize::MAX / 2 - i), &notification))
            .buffer_unordered(connections * 4)
            .collect()
            .await;
        assert!(warm.iter().all(|o| *o == Outcome::Delivered), "{warm:?}");

        let (client_before, fake_before) = (thread_cpu("self"), fake_cpu());
        let started = Instant::now();
        let delivered = stream::iter(0..tokens)
            .map(|i| send(&client, token(i), &notification))
            .buffer_unordered(in_flight)
            .filter(|o| std::future::ready(*o == Outcome::Delivered))
            .count()
            .await;
        let wall = started.elapsed();
        let client_cpu = thread_cpu("self") - client_before;
        let fake_cpu = fake_cpu() - fake_before;
        let per = |d: Duration| d.as_secs_f64() * 1e6 / tokens as f64;
        println!(
            "{tokens} tokens, {connections} connections x {in_flight} in flight: delivered {delivered}, \
             {:.0} req/s, client {:.2} CPU-µs/notification, fake {:.2} CPU-µs/notification",
            tokens as f64 / wall.as_secs_f64(),
            per(client_cpu),
            per(fake_cpu),
        );
    });
    let stats = fake.shutdown();
    println!(
        "fake: delivered {} distinct {} duplicates {} connections {}",
        stats.delivered, stats.distinct_tokens, stats.duplicate_tokens, stats.connections
    );
}

/// Owns the token, so that the future does not borrow a temporary.
async fn send(client: &ApnsClient, token: String, notification: &PreparedNotification) -> Outcome {
    client.send(&token, notification).await
}

/// CPU time of one thread (`self` = the calling thread) from /proc.
fn thread_cpu(task: &str) -> Duration {
    let path = if task == "self" {
        "/proc/thread-self/stat".to_owned()
    } else {
        format!("/proc/self/task/{task}/stat")
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time of the fake's thread.
fn fake_cpu() -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .filter_map(|t| t.ok())
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("volley-fake"))
        })
        .map(|tid| thread_cpu(&tid))
        .sum()
}
