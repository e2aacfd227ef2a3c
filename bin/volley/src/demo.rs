//! `volley demo`: a whole cluster in one process against the fakes, one large broadcast, a
//! progress bar, and a summary checked against the fakes' own counters. The front's live
//! dashboard is printed first and stays up while the demo runs (and after it, with `--hold`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use volley_testkit::cluster::{Cluster, ClusterOptions, APP};

/// Options of `volley demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Devices in the broadcast: `--webpush` browser subscriptions, the rest APNs and FCM
    /// tokens.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: usize,
    /// Share of the tokens that are APNs tokens (the rest are FCM).
    #[arg(long, default_value_t = 0.5)]
    pub apns_share: f64,
    /// Web Push subscriptions among them (each message encrypted for its subscription, and
    /// decrypted by the fake push service).
    #[arg(long, default_value_t = 10_000)]
    pub webpush: usize,
    /// Agents in the cluster (on 2 cores, more agents cost more CPU per notification: see
    /// docs/performance.md).
    #[arg(long, default_value_t = 2)]
    pub agents: usize,
    /// One token in this many is a dead token the fakes reject (0 = none), to show how
    /// invalid tokens are reported.
    #[arg(long, default_value_t = 1000)]
    pub invalid_every: usize,
    /// Hide the progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
    /// Keep the cluster and its dashboard running after the summary, until Ctrl-C.
    #[arg(long)]
    pub hold: bool,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The job's final status, as the front reports it.
    pub status: Value,
    /// Time from sending the request to its 2xx.
    pub accept_time: Duration,
    /// Time from sending the request to the job's last outcome.
    pub total_time: Duration,
    /// The fakes' final counters (APNs, FCM).
    pub fakes: (volley_fake::Stats, volley_fake::Stats),
    /// The fake push service's final counters.
    pub webpush: volley_fake::WebPushStats,
}

/// Web Push subscriptions of `fake` for a broadcast: one in `invalid_every` (0 = none) is one
/// the fake answers 410 Gone.
pub fn webpush_subscriptions(
    fake: &volley_fake::FakeWebPush,
    n: usize,
    invalid_every: usize,
) -> Vec<volley_fake::SubscriptionInfo> {
    fake.subscriptions(&subscription_prefix(), n, invalid_every)
}

/// A prefix for one broadcast's subscription ids, fresh each time so that a second broadcast
/// reaches other subscriptions than the first. It starts with `ok`: random hex could start
/// with a prefix the fake scripts (`dead`, `4040`...).
pub fn subscription_prefix() -> String {
    format!("ok{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Builds the broadcast's JSON body without an intermediate `Value` tree.
pub fn broadcast_body(
    apns: usize,
    fcm: usize,
    webpush: &[volley_fake::SubscriptionInfo],
    invalid_every: usize,
) -> String {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut body = String::with_capacity(apns * 67 + fcm * 70 + webpush.len() * 200 + 256);
    body.push_str(r#"{"title":"Volley demo","body":"Hello from Volley","badge":1,"sound":"default","data":{"campaign":"demo"},"targets":{"apns":["#);
    for i in 0..apns {
        if i > 0 {
            body.push(',');
        }
        // Scripted fakes answer 410 Unregistered to tokens starting with `dead`.
        let dead = invalid_every > 0 && i % invalid_every == invalid_every - 1;
        let prefix = if dead { "deaddead" } else { &run[..8] };
        let _ = write!(body, "\"{prefix}{:056x}\"", i);
    }
    body.push_str(r#"],"fcm":["#);
    for i in 0..fcm {
        if i > 0 {
            body.push(',');
        }
        // ... and UNREGISTERED to FCM tokens starting with `dead`.
        let dead = invalid_every > 0 && i % invalid_every == invalid_every - 1;
        let prefix = if dead { "deaddead" } else { &run[8..16] };
        let _ = write!(body, "\"{prefix}:APA91b{:054x}\"", i);
    }
    body.push_str(r#"],"webpush":["#);
    for (i, subscription) in webpush.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"endpoint":"{}","keys":{{"p256dh":"{}","auth":"{}"}}}}"#,
            subscription.endpoint, subscription.keys.p256dh, subscription.keys.auth
        );
    }
    body.push_str("]}}");
    body
}

fn count(status: &Value, field: &str) -> u64 {
    status.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Runs the demo and prints its summary; fails when the job and the fakes disagree.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let webpush = args.webpush.min(args.tokens);
    let rest = args.tokens - webpush;
    let apns = ((rest as f64) * args.apns_share.clamp(0.0, 1.0)).round() as usize;
    let fcm = rest - apns;
    eprintln!(
        "starting a cluster in this process: fake APNs, FCM and Web Push, a controller, {} agents and a front",
        args.agents
    );
    let cluster = Cluster::start(ClusterOptions {
        agents: args.agents,
        ..ClusterOptions::default()
    })
    .await?;
    // Before the broadcast, so that a browser can be opened on it while it runs.
    println!(
        "dashboard: {}/dashboard (open it now to watch the broadcast)",
        cluster.front_ops_url
    );
    let client = cluster.client();
    let subscriptions = webpush_subscriptions(&cluster.fake_webpush, webpush, args.invalid_every);
    let body = broadcast_body(apns, fcm, &subscriptions, args.invalid_every);
    drop(subscriptions);
    eprintln!(
        "broadcasting one notification to {} devices ({apns} APNs, {fcm} FCM, {} Web Push; \
         {:.1} MB of JSON)",
        args.tokens,
        webpush,
        body.len() as f64 / 1e6
    );
    let started = Instant::now();
    let response = client
        .post(&format!("/v1/apps/{APP}/notifications"), body)
        .await
        .context("posting the broadcast")?;
    let accept_time = started.elapsed();
    if !response.status.is_success() {
        bail!(
            "the front refused the broadcast: {} {}",
            response.status,
            response.body
        );
    }
    let id = response
        .body
        .get("id")
        .and_then(Value::as_str)
        .context("the front's answer has no job id")?
        .to_owned();
    let accepted = count(&response.body, "accepted");

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(accepted)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} ({per_sec}, eta {eta})",
        )?
        .progress_chars("=> "),
    );
    let status = loop {
        let status = client
            .get(&format!("/v1/jobs/{id}?invalid_limit=5"))
            .await?
            .body;
        bar.set_position(accepted - count(&status, "pending").min(accepted));
        match status.get("state").and_then(Value::as_str) {
            Some("done" | "cancelled") => break status,
            Some(_) => {}
            None => bail!("unexpected job status: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total_time = started.elapsed();
    bar.finish_and_clear();
    if args.hold {
        eprintln!(
            "job final; the dashboard stays up at {}/dashboard until Ctrl-C, then the summary",
            cluster.front_ops_url
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    let webpush = cluster.fake_webpush.stats();
    let fakes = tokio::task::spawn_blocking(move || cluster.shutdown()).await??;
    let report = DemoReport {
        status,
        accept_time,
        total_time,
        fakes,
        webpush,
    };
    print_summary(&report);
    check(&report)?;
    Ok(report)
}

fn print_summary(report: &DemoReport) {
    let status = &report.status;
    let (apns, fcm) = &report.fakes;
    let delivered = count(status, "delivered");
    let seconds = report.total_time.as_secs_f64();
    println!();
    println!(
        "job {}",
        status.get("id").and_then(Value::as_str).unwrap_or("?")
    );
    println!(
        "  accepted      {:>10}  (HTTP 202 after {:.2} s)",
        count(status, "accepted"),
        report.accept_time.as_secs_f64()
    );
    println!(
        "  delivered     {delivered:>10}  (fake APNs {}, fake FCM {}, fake Web Push {})",
        apns.delivered, fcm.delivered, report.webpush.delivered
    );
    println!(
        "  invalid       {:>10}  (tokens the providers called dead)",
        count(status, "invalid")
    );
    println!("  failed        {:>10}", count(status, "failed"));
    println!(
        "  duplicates    {:>10}  (possible: {})",
        apns.duplicate_tokens + fcm.duplicate_tokens + report.webpush.duplicate_ids,
        count(status, "possible_duplicates")
    );
    println!("  time          {seconds:>10.2} s");
    println!(
        "  rate          {:>10.0} notifications/s delivered",
        delivered as f64 / seconds.max(1e-9)
    );
    if let Some(sample) = status
        .get("invalid_tokens")
        .and_then(Value::as_array)
        .and_then(|tokens| tokens.first())
    {
        println!(
            "  e.g. invalid  {} token: {}",
            sample
                .get("platform")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            sample.get("reason").and_then(Value::as_str).unwrap_or("?")
        );
    }
}

/// The demo's promise: every accepted notification has an outcome, and what the job says was
/// delivered is what the fakes received.
fn check(report: &DemoReport) -> anyhow::Result<()> {
    let status = &report.status;
    let (apns, fcm) = &report.fakes;
    let accepted = count(status, "accepted");
    let outcomes = count(status, "delivered")
        + count(status, "invalid")
        + count(status, "failed")
        + count(status, "cancelled");
    if outcomes != accepted {
        bail!("counts do not balance: accepted {accepted}, outcomes {outcomes}");
    }
    let fake_delivered = apns.distinct_tokens + fcm.distinct_tokens + report.webpush.distinct_ids;
    if fake_delivered != count(status, "delivered") {
        bail!(
            "the job reports {} delivered but the fakes received {fake_delivered} distinct tokens \
             and subscriptions",
            count(status, "delivered")
        );
    }
    if report.webpush.decrypt_failures > 0 || report.webpush.vapid_failures > 0 {
        bail!(
            "the fake push service could not decrypt {} messages and refused {} VAPID signatures",
            report.webpush.decrypt_failures,
            report.webpush.vapid_failures
        );
    }
    println!("  check         ok: accepted = delivered + invalid + failed, and the fakes agree");
    Ok(())
}
