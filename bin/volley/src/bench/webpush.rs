//! The Web Push ceiling: Volley's Web Push client straight to the fake push service, with
//! nothing between, so that a broadcast's rate can be read against what the client's
//! per-message work (one ECDH, one AES-GCM) and the fake's decryption allow on this machine.

use std::time::Duration;

use volley_fake::{FakeWebPush, FakeWebPushConfig};
use volley_provider::tls::TlsOptions;
use volley_webpush::{Prepared, WebPushClient, WebPushConfig};

use super::report::CeilingResult;
use super::workload::measure_ceiling;

/// The message the broadcast's front renders for Web Push, as the ceiling sends it.
const MESSAGE: &str =
    r#"{"title":"Volley bench","body":"Hello from Volley","data":{"campaign":"bench"}}"#;

/// Runs the ceiling on a thread of its own (named for the CPU accounting).
pub fn ceiling(
    messages: u64,
    connections: usize,
    in_flight: usize,
    quiet: bool,
) -> anyhow::Result<CeilingResult> {
    std::thread::Builder::new()
        .name("volley-ceiling".into())
        .spawn(move || on_this_thread(messages, connections, in_flight, quiet))?
        .join()
        .map_err(|_| anyhow::anyhow!("the web push ceiling thread panicked"))?
}

fn on_this_thread(
    messages: u64,
    connections: usize,
    in_flight: usize,
    quiet: bool,
) -> anyhow::Result<CeilingResult> {
    volley_provider::tls::install_crypto_provider();
    // The same fake push service the clusters use: VAPID verified, every message decrypted.
    let fake = FakeWebPush::start(
        FakeWebPushConfig::default(),
        std::net::TcpListener::bind("127.0.0.1:0")?,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let mut config = WebPushConfig::new(
            volley_webpush::vapid::VapidKey::generate(),
            volley_testkit::cluster::VAPID_SUBJECT.into(),
        );
        config.guard = volley_webpush::guard::Guard::new(Vec::new(), vec!["127.0.0.1/32".into()])?;
        config.connections_per_origin = connections;
        config.request_timeout = Duration::from_secs(30);
        config.tls = TlsOptions {
            extra_ca_pem: Some(fake.ca_pem_path().to_path_buf()),
            only_extra_ca: true,
            client_identity: None,
        };
        let client = WebPushClient::new(config)?;
        let prepared = Prepared {
            payload: bytes::Bytes::from_static(MESSAGE.as_bytes()),
            ttl: 2_419_200,
            urgency: None,
            topic: None,
        };
        // Subscriptions are made before measuring, as the agent gets them in a chunk.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let token = |prefix: &str, i: u64| {
            // `ok`: a random hex prefix could start with one the fake scripts (`dead`...).
            let subscription = fake.subscription(&format!("ok{prefix}-{i}"));
            volley_webpush::subscription::encode(
                &subscription.endpoint,
                &subscription.keys.p256dh,
                &subscription.keys.auth,
            )
        };
        let list = (0..messages)
            .map(|i| token(&run[..8], i))
            .collect::<Result<Vec<_>, _>>()?;
        let warm_up = (0..(connections * 8) as u64)
            .map(|i| token(&run[8..16], i))
            .collect::<Result<Vec<_>, _>>()?;
        let warm_up: Vec<&str> = warm_up.iter().map(String::as_str).collect();
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        let send = |token| client.send(token, &prepared);
        let fake_part = "fake-webpush";
        measure_ceiling(
            &warm_up,
            &list,
            send,
            connections,
            in_flight,
            quiet,
            fake_part,
        )
        .await
    });
    drop(runtime);
    fake.shutdown();
    result
}

/// The ceiling of a broadcast whose share `webpush` of notifications is Web Push and the rest
/// APNs: each notification costs its own ceiling's time and CPU.
pub fn blend(apns: &CeilingResult, web: &CeilingResult, webpush: f64) -> CeilingResult {
    let share = webpush.clamp(0.0, 1.0);
    let seconds_per = share / web.rate.max(1e-9) + (1.0 - share) / apns.rate.max(1e-9);
    let mut usage = apns.usage.clone();
    usage.extend(web.usage.iter().cloned());
    CeilingResult {
        tokens: apns.tokens + web.tokens,
        connections: apns.connections,
        in_flight: apns.in_flight,
        delivered: apns.delivered + web.delivered,
        seconds: apns.seconds + web.seconds,
        rate: 1.0 / seconds_per.max(1e-12),
        usage,
        cpu_us_per_notification: share * web.cpu_us_per_notification
            + (1.0 - share) * apns.cpu_us_per_notification,
        other_load_cores: apns.other_load_cores.max(web.other_load_cores),
    }
}
