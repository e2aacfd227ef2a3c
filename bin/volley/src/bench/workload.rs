//! The three workloads: a broadcast through the front, ingest of single-notification requests,
//! and the ceiling (the APNs client straight to a fake APNs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use volley_apns::{Alert, ApnsAuth, ApnsClient, ApnsConfig, ApnsEndpoint, Notification, Outcome};
use volley_contracts::TokenList;
use volley_fake::{FakeConfig, FakeServer};
use volley_provider::tls::TlsOptions;
use volley_testkit::cluster::TOPIC;
use volley_testkit::http::FrontClient;

use super::load::LoadConnection;
use super::procfs;
use super::report::{BroadcastResult, CeilingResult, CpuSample, HostUsage, IngestResult, Usage};
use super::system::{self, System, Target};

/// How long a job may run before the bench gives up on it.
const JOB_LIMIT: Duration = Duration::from_secs(600);

/// The broadcast's notification, as the ceiling sends it too.
const TITLE: &str = "Volley bench";
const BODY: &str = "Hello from Volley";

fn bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what:<10} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} ({{per_sec}})"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Tracks each part's CPU during a phase.
pub struct CpuTracker {
    started: Instant,
    base: BTreeMap<String, f64>,
    machine: f64,
    /// Samples taken so far.
    pub samples: Vec<CpuSample>,
}

impl CpuTracker {
    /// Starts tracking now.
    pub fn start(system: &System) -> CpuTracker {
        CpuTracker {
            started: Instant::now(),
            base: system.cpu(),
            machine: procfs::machine_busy(),
            samples: Vec::new(),
        }
    }

    /// Cores the rest of the machine kept busy since the start: everything `/proc/stat`
    /// counts minus what the parts in `delta` used.
    pub fn other_load(&self, delta: &BTreeMap<String, f64>) -> f64 {
        let ours: f64 = delta.values().sum();
        let machine = procfs::machine_busy() - self.machine;
        ((machine - ours) / self.started.elapsed().as_secs_f64().max(1e-9)).max(0.0)
    }

    /// CPU of each part since the start.
    pub fn delta(&self, system: &System) -> BTreeMap<String, f64> {
        system
            .cpu()
            .into_iter()
            .map(|(name, cpu)| {
                let base = self.base.get(&name).copied().unwrap_or(0.0);
                (name, (cpu - base).max(0.0))
            })
            .collect()
    }

    /// Seconds since tracking started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records a sample.
    pub fn sample(&mut self, system: &System) {
        let cpu_s = self.delta(system);
        self.samples.push(CpuSample {
            t: self.started.elapsed().as_secs_f64(),
            cpu_s,
        });
    }
}

/// Turns CPU deltas and peak RSS into [`Usage`] rows; returns them with the system's total
/// CPU per notification (bench parts excluded).
pub fn usage(
    cpu: &BTreeMap<String, f64>,
    rss: &BTreeMap<String, u64>,
    notifications: u64,
) -> (Vec<Usage>, Option<f64>) {
    let per = |cpu: f64| cpu * 1e6 / notifications.max(1) as f64;
    let mut rows: Vec<Usage> = cpu
        .iter()
        .map(|(name, cpu)| Usage {
            name: name.clone(),
            cpu_s: *cpu,
            cpu_us_per_notification: per(*cpu),
            peak_rss_bytes: rss.get(name).copied(),
        })
        .collect();
    for (name, bytes) in rss {
        if !cpu.contains_key(name) {
            rows.push(Usage {
                name: name.clone(),
                cpu_s: 0.0,
                cpu_us_per_notification: 0.0,
                peak_rss_bytes: Some(*bytes),
            });
        }
    }
    let system: f64 = cpu
        .iter()
        .filter(|(name, _)| !system::is_bench_group(name))
        .map(|(_, cpu)| cpu)
        .sum();
    let total = (notifications > 0).then(|| per(system));
    (rows, total)
}

/// Sums the CPU deltas of each host's processes (`hosts`: host → its processes) into
/// [`HostUsage`] rows, over a phase of `seconds`.
pub fn host_usage(
    cpu: &BTreeMap<String, f64>,
    hosts: &BTreeMap<String, Vec<String>>,
    notifications: u64,
    seconds: f64,
) -> Vec<HostUsage> {
    hosts
        .iter()
        .map(|(name, processes)| {
            let cpu_s: f64 = processes.iter().filter_map(|p| cpu.get(p)).sum();
            HostUsage {
                name: name.clone(),
                processes: processes.clone(),
                cpu_s,
                cpu_us_per_notification: cpu_s * 1e6 / notifications.max(1) as f64,
                cores: cpu_s / seconds.max(1e-9),
            }
        })
        .collect()
}

/// The ceiling: `tokens` notifications from one `ApnsClient` to a fake APNs, both on threads of
/// this process (`volley-ceiling`, `volley-fake-apns`), nothing else running.
pub fn ceiling(
    tokens: u64,
    connections: usize,
    in_flight: usize,
    quiet: bool,
) -> anyhow::Result<CeilingResult> {
    std::thread::Builder::new()
        .name("volley-ceiling".into())
        .spawn(move || ceiling_on_this_thread(tokens, connections, in_flight, quiet))?
        .join()
        .map_err(|_| anyhow::anyhow!("the ceiling thread panicked"))?
}

/// The measured part of a ceiling: sends `warm_up` (every one must be delivered), then
/// `list` through `send`, `in_flight` at a time, and reports the rate and the CPU of the
/// client's thread and of the fake's part `fake` (a thread group of this process).
pub(super) async fn measure_ceiling<'a, F, Fut>(
    warm_up: &[&'a str],
    list: &[&'a str],
    send: F,
    connections: usize,
    in_flight: usize,
    quiet: bool,
    fake: &str,
) -> anyhow::Result<CeilingResult>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let warm = stream::iter(warm_up.iter().copied())
        .map(&send)
        .buffer_unordered(in_flight.max(1))
        .filter(|o| std::future::ready(*o == Outcome::Delivered))
        .count()
        .await;
    if warm != warm_up.len() {
        bail!(
            "the ceiling's warm-up delivered {warm} of {}",
            warm_up.len()
        );
    }
    let tokens = list.len() as u64;
    let bar = bar(tokens, quiet, "ceiling");
    let before = system::self_groups();
    let (machine_before, process_before) = (procfs::machine_busy(), procfs::self_cpu());
    let started = Instant::now();
    let mut delivered = 0u64;
    let mut answered = 0u64;
    let mut sends = stream::iter(list.iter().copied())
        .map(&send)
        .buffer_unordered(in_flight.max(1));
    while let Some(outcome) = sends.next().await {
        answered += 1;
        if outcome == Outcome::Delivered {
            delivered += 1;
        }
        // The bar takes a lock: update it rarely so that it costs the client nothing.
        if answered.is_multiple_of(1024) {
            bar.set_position(answered);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = system::self_groups();
    let others = (procfs::machine_busy() - machine_before) - (procfs::self_cpu() - process_before);
    bar.finish_and_clear();
    let cpu: BTreeMap<String, f64> = ["ceiling-client", fake]
        .into_iter()
        .map(|name| {
            let spent =
                after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0);
            (name.to_owned(), spent.max(0.0))
        })
        .collect();
    let total: f64 = cpu.values().sum();
    let (usage, _) = usage(&cpu, &BTreeMap::new(), delivered);
    Ok(CeilingResult {
        tokens,
        connections,
        in_flight,
        delivered,
        seconds,
        rate: delivered as f64 / seconds.max(1e-9),
        usage,
        cpu_us_per_notification: total * 1e6 / delivered.max(1) as f64,
        other_load_cores: (others / seconds.max(1e-9)).max(0.0),
    })
}

/// The notification the broadcast's front renders, built directly.
pub fn ceiling_notification() -> Notification {
    let mut custom = serde_json::Map::new();
    custom.insert("campaign".into(), Value::from("bench"));
    Notification {
        topic: TOPIC.into(),
        alert: Some(Alert {
            title: Some(TITLE.into()),
            body: Some(BODY.into()),
            ..Alert::default()
        }),
        badge: Some(1),
        sound: Some("default".into()),
        custom,
        ..Notification::default()
    }
}

fn ceiling_on_this_thread(
    tokens: u64,
    connections: usize,
    in_flight: usize,
    quiet: bool,
) -> anyhow::Result<CeilingResult> {
    volley_provider::tls::install_crypto_provider();
    let key = volley_fake::keys::generate_apns_key();
    // The same fake the clusters use: TLS, ES256 provider tokens verified, topic checked.
    let fake = FakeServer::start(
        FakeConfig {
            apns_jwt_public_key_pem: Some(key.public_pem.clone()),
            apns_topic: Some(TOPIC.into()),
            ..FakeConfig::apns()
        },
        std::net::TcpListener::bind("127.0.0.1:0")?,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = ApnsClient::new(ApnsConfig {
            connections,
            request_timeout: Duration::from_secs(30),
            tls: TlsOptions {
                extra_ca_pem: Some(fake.ca_pem_path().to_path_buf()),
                only_extra_ca: true,
                client_identity: None,
            },
            ..ApnsConfig::new(
                ApnsEndpoint::Custom(
                    fake.endpoint()
                        .parse()
                        .map_err(|e| anyhow::anyhow!("fake endpoint: {e}"))?,
                ),
                ApnsAuth::Token {
                    key_pem: key.private_pem.clone(),
                    key_id: "BENCHKEY12".into(),
                    team_id: "BENCHTEAM1".into(),
                },
            )
        })?;
        let notification = ceiling_notification().prepare()?;
        // Tokens are built before measuring, as the agent gets them in a chunk's buffer.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let list: TokenList = (0..tokens)
            .map(|i| format!("{}{i:056x}", &run[..8]))
            .collect();
        let warm_up: TokenList = (0..connections * 8)
            .map(|i| format!("{}{i:056x}", &run[8..16]))
            .collect();
        let warm_up: Vec<&str> = warm_up.iter().collect();
        let list: Vec<&str> = list.iter().collect();
        let send = |token| client.send(token, &notification);
        measure_ceiling(
            &warm_up,
            &list,
            send,
            connections,
            in_flight,
            quiet,
            "fake-apns",
        )
        .await
    });
    drop(runtime);
    fake.shutdown();
    result
}

fn count(value: &Value, field: &str) -> u64 {
    value.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Options of the broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastOptions {
    /// Tokens in all.
    pub tokens: u64,
    /// Share of APNs tokens (of those that are not Web Push).
    pub apns_share: f64,
    /// Share of Web Push subscriptions.
    pub webpush_share: f64,
    /// Requests the tokens are split into.
    pub requests: usize,
    /// One token in this many is dead (0 = none).
    pub invalid_every: usize,
    /// How often the fakes' counters are read.
    pub poll: Duration,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// Splits `total` into `parts` near-equal parts.
fn split(total: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Sends one broadcast and follows it to its last delivery.
pub async fn broadcast(
    system: &System,
    options: &BroadcastOptions,
) -> anyhow::Result<(BroadcastResult, CpuTracker)> {
    let target = system.target();
    let client = FrontClient::new(target.front_url.clone(), Some(target.api_key.clone()));
    let webpush = ((options.tokens as f64) * options.webpush_share.clamp(0.0, 1.0)).round() as u64;
    let rest = options.tokens - webpush;
    let apns = ((rest as f64) * options.apns_share.clamp(0.0, 1.0)).round() as u64;
    let fcm = rest - apns;
    let subscriptions = system
        .webpush_subscriptions(webpush as usize, options.invalid_every)
        .await?;
    let mut subscriptions = subscriptions.as_slice();
    let bodies: Vec<Bytes> = split(apns, options.requests)
        .into_iter()
        .zip(split(fcm, options.requests))
        .zip(split(webpush, options.requests))
        .map(|((apns, fcm), webpush)| {
            let (these, others) = subscriptions.split_at(webpush as usize);
            subscriptions = others;
            Bytes::from(crate::demo::broadcast_body(
                apns as usize,
                fcm as usize,
                these,
                options.invalid_every,
            ))
        })
        .collect();
    let body_bytes = bodies.iter().map(|b| b.len() as u64).sum();
    let path = format!("/v1/apps/{}/notifications", target.app);
    let base = system.fake_stats().await?.delivered();

    let mut cpu = CpuTracker::start(system);
    let mut timeline = Vec::new();
    let started = Instant::now();
    let posting = futures::future::join_all(bodies.into_iter().map(|body| {
        let client = client.clone();
        let path = path.clone();
        async move {
            let answer = client.post(&path, body).await;
            (answer, started.elapsed())
        }
    }));
    tokio::pin!(posting);
    // Keep sampling while the front accepts: with several requests, delivery of the first job
    // starts before the last 2xx.
    let answers = loop {
        tokio::select! {
            answers = &mut posting => break answers,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                cpu.sample(system);
                let delivered = system.fake_stats().await?.delivered().saturating_sub(base);
                timeline.push((started.elapsed().as_secs_f64(), delivered));
            }
        }
    };
    let mut ids = Vec::new();
    let mut accepted = 0;
    let mut accept = Duration::ZERO;
    for (answer, at) in answers {
        let answer = answer.context("posting the broadcast")?;
        if !answer.status.is_success() {
            bail!(
                "the front refused the broadcast: {} {}",
                answer.status,
                answer.body
            );
        }
        accepted += count(&answer.body, "accepted");
        ids.push(
            answer
                .body
                .get("id")
                .and_then(Value::as_str)
                .context("the front's answer has no job id")?
                .to_owned(),
        );
        accept = accept.max(at);
    }

    let bar = bar(accepted, options.quiet, "broadcast");
    let mut statuses: Vec<Option<Value>> = vec![None; ids.len()];
    let mut last_status_poll = Instant::now() - Duration::from_secs(1);
    let mut last_cpu_sample = Instant::now() - Duration::from_secs(1);
    let fakes = loop {
        let counts = system.fake_stats().await?;
        let delivered = counts.delivered().saturating_sub(base);
        timeline.push((started.elapsed().as_secs_f64(), delivered));
        bar.set_position(delivered);
        if last_cpu_sample.elapsed() >= Duration::from_millis(100) {
            cpu.sample(system);
            last_cpu_sample = Instant::now();
        }
        if last_status_poll.elapsed() >= Duration::from_millis(250) {
            last_status_poll = Instant::now();
            for (id, status) in ids.iter().zip(statuses.iter_mut()) {
                if status.is_some() {
                    continue;
                }
                let answer = client
                    .get(&format!("/v1/jobs/{id}?invalid_limit=0"))
                    .await?;
                match answer.body.get("state").and_then(Value::as_str) {
                    Some("done" | "cancelled") => *status = Some(answer.body),
                    Some(_) => {}
                    None => bail!("unexpected job status: {}", answer.body),
                }
            }
            if statuses.iter().all(Option::is_some) {
                // One last read, so that the timeline ends on the final count.
                let counts = system.fake_stats().await?;
                let delivered = counts.delivered().saturating_sub(base);
                timeline.push((started.elapsed().as_secs_f64(), delivered));
                break counts;
            }
        }
        if started.elapsed() > JOB_LIMIT {
            bail!("the broadcast did not finish within {JOB_LIMIT:?}");
        }
        tokio::time::sleep(options.poll).await;
    };
    cpu.sample(system);
    bar.finish_and_clear();

    let sum = |field: &str| {
        statuses
            .iter()
            .flatten()
            .map(|status| count(status, field))
            .sum::<u64>()
    };
    let (delivered, invalid, failed, cancelled) = (
        sum("delivered"),
        sum("invalid"),
        sum("failed"),
        sum("cancelled"),
    );
    let final_count = timeline.last().map_or(0, |(_, n)| *n);
    let first_delivery_s = timeline
        .iter()
        .find(|(_, n)| *n > 0)
        .map_or(0.0, |(t, _)| *t);
    let last_delivery_s = timeline
        .iter()
        .find(|(_, n)| *n >= final_count)
        .map_or(0.0, |(t, _)| *t);
    let accept_s = accept.as_secs_f64();
    let window = if last_delivery_s > accept_s {
        last_delivery_s - accept_s
    } else {
        last_delivery_s
    };
    let latency_s = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .filter_map(|(name, q)| Some((name.to_owned(), reached(&timeline, q)?)))
        .collect();
    Ok((
        BroadcastResult {
            tokens: options.tokens,
            apns_tokens: apns,
            fcm_tokens: fcm,
            webpush_subscriptions: webpush,
            requests: ids.len(),
            body_bytes,
            accept_s,
            accepted,
            delivered,
            invalid,
            failed,
            cancelled,
            balanced: accepted == delivered + invalid + failed + cancelled,
            fake_delivered: fakes.delivered().saturating_sub(base),
            fake_distinct: fakes.distinct(),
            fake_duplicates: fakes.duplicates(),
            first_delivery_s,
            last_delivery_s,
            rate: final_count as f64 / window.max(1e-9),
            rate_from_send: final_count as f64 / last_delivery_s.max(1e-9),
            latency_s,
            timeline,
        },
        cpu,
    ))
}

/// When the counter of `timeline` first reached the fraction `q` of its final value,
/// interpolated between polls.
fn reached(timeline: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = timeline.last()?.1;
    if total == 0 {
        return None;
    }
    let goal = ((total as f64) * q).ceil().max(1.0);
    let mut previous = (0.0, 0u64);
    for &(t, n) in timeline {
        if n as f64 >= goal {
            let (t0, n0) = previous;
            if n == n0 {
                return Some(t);
            }
            let fraction = (goal - n0 as f64) / (n - n0) as f64;
            return Some(t0 + (t - t0) * fraction);
        }
        previous = (t, n);
    }
    None
}

/// Options of the ingest workload.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Concurrent connections, one request at a time each.
    pub connections: usize,
    /// Run for this long...
    pub duration: Duration,
    /// ... or until this many requests were sent.
    pub requests: Option<u64>,
    /// Share of requests that target an APNs token (the rest an FCM token).
    pub apns_share: f64,
    /// Hide the progress bar.
    pub quiet: bool,
}

#[derive(Default)]
struct ConnectionTally {
    latencies_us: Vec<u32>,
    accepted_requests: u64,
    accepted: u64,
    rejected: BTreeMap<u16, u64>,
    errors: u64,
}

/// Many single-notification requests at once, each connection one at a time (like wrk).
pub async fn ingest(
    system: &System,
    options: &IngestOptions,
) -> anyhow::Result<(IngestResult, CpuTracker)> {
    let target = system.target();
    let controller =
        volley_contracts::connect_controller(target.controller.as_str(), &target.links)
            .await
            .context("connecting to the controller")?;
    let base = system.fake_stats().await?.delivered();
    let sent = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let budget = options.requests.unwrap_or(u64::MAX);
    let mut cpu = CpuTracker::start(system);
    let started = Instant::now();
    let deadline = started + options.duration;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut connections = Vec::new();
    for _ in 0..options.connections.max(1) {
        let context = LoadContext {
            target: target.clone(),
            sent: sent.clone(),
            answered: answered.clone(),
            budget,
            deadline: options.requests.is_none().then_some(deadline),
            prefix: run[..8].to_owned(),
            apns_per_mille: (options.apns_share.clamp(0.0, 1.0) * 1000.0).round() as u64,
        };
        connections.push(tokio::spawn(load_connection(context)));
    }
    let total = options.requests.unwrap_or(0);
    let bar = if options.requests.is_some() {
        bar(total, options.quiet, "ingest")
    } else {
        bar(options.duration.as_secs(), options.quiet, "ingest s")
    };
    let mut timeline = Vec::new();
    while !connections.iter().all(|c| c.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let done = answered.load(Ordering::Relaxed);
        timeline.push((started.elapsed().as_secs_f64(), done));
        bar.set_position(if options.requests.is_some() {
            done
        } else {
            started.elapsed().as_secs()
        });
        cpu.sample(system);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut tally = ConnectionTally::default();
    for connection in connections {
        let part = connection.await?;
        tally.latencies_us.extend(part.latencies_us);
        tally.accepted_requests += part.accepted_requests;
        tally.accepted += part.accepted;
        tally.errors += part.errors;
        for (status, n) in part.rejected {
            *tally.rejected.entry(status).or_default() += n;
        }
    }
    timeline.push((seconds, answered.load(Ordering::Relaxed)));

    // Wait for the engine to deliver what it accepted, still counting CPU.
    let drain_deadline = Instant::now() + JOB_LIMIT;
    let stats = loop {
        let stats = controller
            .stats(tarpc::context::current())
            .await
            .context("reading the controller's stats")?
            .map_err(|error| anyhow::anyhow!("the controller refused its stats: {error}"))?;
        if stats.pending_notifications == 0 {
            break stats;
        }
        if Instant::now() > drain_deadline {
            bail!("the ingested notifications were not delivered within {JOB_LIMIT:?}");
        }
        // `stats` is cheap (counters, not a walk over the jobs); 50 ms keeps `drain_s` close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        cpu.sample(system);
    };
    let drain_s = started.elapsed().as_secs_f64();
    cpu.sample(system);
    let (delivered, errored) = stats
        .apps
        .iter()
        .fold((0, 0), |(s, e), c| (s + c.success, e + c.error));
    let fakes = system.fake_stats().await?;
    tally.latencies_us.sort_unstable();
    let latency_ms = [("p50", 0.50), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)]
        .into_iter()
        .filter_map(|(name, q)| {
            let sorted = &tally.latencies_us;
            let index =
                ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
            Some((name.to_owned(), f64::from(*sorted.get(index)?) / 1e3))
        })
        .collect();
    Ok((
        IngestResult {
            connections: options.connections,
            seconds,
            requests: sent.load(Ordering::Relaxed).min(budget),
            accepted_requests: tally.accepted_requests,
            rejected: tally.rejected,
            errors: tally.errors,
            rate: tally.accepted_requests as f64 / seconds.max(1e-9),
            latency_ms,
            accepted: tally.accepted,
            delivered,
            errored,
            balanced: tally.accepted == delivered + errored,
            fake_delivered: fakes.delivered().saturating_sub(base),
            drain_s,
            delivered_rate: tally.accepted as f64 / drain_s.max(1e-9),
            timeline,
        },
        cpu,
    ))
}

struct LoadContext {
    target: Target,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    budget: u64,
    deadline: Option<Instant>,
    prefix: String,
    apns_per_mille: u64,
}

/// The part of an answer the load generator reads.
#[derive(serde::Deserialize)]
struct Accepted {
    accepted: u64,
}

/// One keep-alive HTTP/1.1 connection sending requests back to back.
async fn load_connection(context: LoadContext) -> ConnectionTally {
    let mut tally = ConnectionTally::default();
    let authority = context
        .target
        .front_url
        .trim_start_matches("http://")
        .to_owned();
    let path = format!("/v1/apps/{}/notifications", context.target.app);
    let authorization = format!("Bearer {}", context.target.api_key);
    let mut connection = None;
    loop {
        if context.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = context.sent.fetch_add(1, Ordering::Relaxed);
        if n >= context.budget {
            break;
        }
        if connection.is_none() {
            match LoadConnection::connect(&authority, &path, &authorization).await {
                Ok(c) => connection = Some(c),
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = connection.as_mut() else {
            continue;
        };
        let apns = n % 1000 < context.apns_per_mille;
        let prefix = &context.prefix;
        let sent_at = Instant::now();
        let answer = c
            .post(|body| {
                use std::io::Write as _;
                let _ = if apns {
                    write!(
                        body,
                        r#"{{"title":"{TITLE}","body":"{BODY}","targets":{{"apns":["{prefix}{n:056x}"]}}}}"#
                    )
                } else {
                    write!(
                        body,
                        r#"{{"title":"{TITLE}","body":"{BODY}","targets":{{"fcm":["{prefix}:APA91b{n:054x}"]}}}}"#
                    )
                };
            })
            .await;
        let elapsed = sent_at.elapsed();
        context.answered.fetch_add(1, Ordering::Relaxed);
        let close = answer.as_ref().is_ok_and(|answer| answer.close);
        match answer {
            Ok(answer) if (200..300).contains(&answer.status) => {
                tally.accepted_requests += 1;
                tally
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                tally.accepted += serde_json::from_slice::<Accepted>(answer.body)
                    .map(|a| a.accepted)
                    .unwrap_or(0);
            }
            Ok(answer) => {
                *tally.rejected.entry(answer.status).or_default() += 1;
            }
            Err(_) => {
                tally.errors += 1;
                connection = None;
            }
        }
        if close {
            connection = None;
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(0, 2), vec![0, 0]);
        assert_eq!(split(5, 0), vec![5]);
    }

    #[test]
    fn percentile_times_interpolate_between_polls() {
        let timeline = [(0.0, 0), (1.0, 100), (2.0, 200), (3.0, 200)];
        assert_eq!(reached(&timeline, 0.5), Some(1.0));
        assert_eq!(reached(&timeline, 0.25), Some(0.5));
        assert_eq!(reached(&timeline, 1.0), Some(2.0));
        assert_eq!(reached(&[(1.0, 0)], 0.5), None);
    }
}
