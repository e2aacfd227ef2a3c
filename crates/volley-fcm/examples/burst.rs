//! Measures the FCM client's CPU cost per notification against the fake FCM on loopback.
//!
//! `cargo run --release -p volley-fcm --example burst -- [tokens] [connections] [in-flight]`
//!
//! The client runs on a current-thread runtime on the main thread and the fake on its own
//! thread, so per-thread CPU times from /proc separate the two (Linux only).

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use volley_fake::{keys, FakeConfig, FakeServer};
use volley_fcm::{FcmClient, FcmConfig, FcmMessage, Notification, PreparedMessage};
use volley_provider::tls::TlsOptions;
use volley_provider::{Endpoint, Outcome};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().unwrap());
    let tokens = args.next().unwrap_or(200_000);
    let connections = args.next().unwrap_or(4);
    let in_flight = args.next().unwrap_or(400);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = FakeConfig {
        fcm_project: Some("demo-project".into()),
        fcm_oauth_public_key_pem: Some(keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM.into()),
        ..FakeConfig::fcm()
    };
    let fake = FakeServer::start(config, listener).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = FcmClient::new(FcmConfig {
            base: Endpoint {
                tls: true,
                host: "127.0.0.1".into(),
                port: fake.addr().port(),
            },
            allowed_token_uris: vec![fake.token_uri()],
            connections,
            request_timeout: Duration::from_secs(30),
            tls: TlsOptions {
                extra_ca_pem: Some(fake.ca_pem_path().to_path_buf()),
                only_extra_ca: true,
                client_identity: None,
            },
            ..FcmConfig::new(keys::test_service_account(&fake.token_uri(), "demo-project"))
        })
        .unwrap();
        let message = PreparedMessage::new(&FcmMessage {
            notification: Some(Notification {
                title: Some("Hello".into()),
                body: Some("A notification body of an ordinary length.".into()),
                image: None,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let token = |i: usize| format!("fTok{i:09}:APA91bHPRgkFLJu6sY1bVhCTkeGUFCdUdMv2lQWzX");
        // Warm up: connections and the access token.
        assert_eq!(client.send(&token(usize::MAX / 2), &message).await, Outcome::Delivered);

        let (client_before, fake_before) = (thread_cpu("self"), fake_cpu());
        let started = Instant::now();
        let delivered = stream::iter(0..tokens)
            .map(|i| {
                let (client, message) = (&client, &message);
                async move { client.send(&token(i), message).await }
            })
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
        "fake: delivered {} distinct {} duplicates {} oauth tokens {}",
        stats.delivered, stats.distinct_tokens, stats.duplicate_tokens, stats.oauth_tokens_issued
    );
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
