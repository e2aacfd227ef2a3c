//! What a bench run measured, the medians over runs, and how they are printed, saved and drawn.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// One part's resource use over a measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// The process (or, in one process, the thread group).
    pub name: String,
    /// utime + stime over the phase, in seconds.
    pub cpu_s: f64,
    /// `cpu_s` divided by the notifications delivered in the phase, in microseconds.
    pub cpu_us_per_notification: f64,
    /// Peak resident set size (`VmHWM`), in bytes, where the part is a process.
    pub peak_rss_bytes: Option<u64>,
}

/// One host's resource use over a measured phase (`--topology hosts`): the sum of its
/// processes'.
#[derive(Debug, Clone, Serialize)]
pub struct HostUsage {
    /// The host (`controller`, `front-0`, `agent-3`, `providers`).
    pub name: String,
    /// The processes it runs.
    pub processes: Vec<String>,
    /// utime + stime of its processes over the phase, in seconds.
    pub cpu_s: f64,
    /// `cpu_s` divided by the notifications delivered in the phase, in microseconds.
    pub cpu_us_per_notification: f64,
    /// `cpu_s` divided by the phase's wall time: the cores it kept busy on average.
    pub cores: f64,
}

/// Cumulative CPU seconds of each part since a phase began, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct CpuSample {
    /// Seconds since the phase began.
    pub t: f64,
    /// CPU seconds of each part since the phase began.
    pub cpu_s: BTreeMap<String, f64>,
}

/// The raw HTTP/2 limit: the APNs client straight to a fake APNs, nothing in between.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    /// Notifications sent (after a warm-up that is not counted).
    pub tokens: u64,
    /// HTTP/2 connections of the client.
    pub connections: usize,
    /// Requests in flight at once, over all connections.
    pub in_flight: usize,
    /// Answered 200.
    pub delivered: u64,
    /// Wall time of the measured sends.
    pub seconds: f64,
    /// `delivered / seconds`.
    pub rate: f64,
    /// Client and fake (the client thread and the fake's thread).
    pub usage: Vec<Usage>,
    /// Client + fake CPU per delivered notification, in microseconds.
    pub cpu_us_per_notification: f64,
    /// Cores other processes on the machine kept busy meanwhile (from `/proc/stat`).
    pub other_load_cores: f64,
}

/// One broadcast through the front.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastResult {
    /// Tokens in the broadcast.
    pub tokens: u64,
    /// Of which APNs tokens.
    pub apns_tokens: u64,
    /// Of which FCM tokens.
    pub fcm_tokens: u64,
    /// Of which Web Push subscriptions.
    pub webpush_subscriptions: u64,
    /// API requests the tokens were split into (sent at once).
    pub requests: usize,
    /// Bytes of JSON sent.
    pub body_bytes: u64,
    /// From sending the requests to the last 2xx, in seconds.
    pub accept_s: f64,
    /// Notifications the front accepted (sum of `accepted`).
    pub accepted: u64,
    /// The jobs' final counts.
    pub delivered: u64,
    /// Tokens the providers called invalid.
    pub invalid: u64,
    /// Notifications that failed for good.
    pub failed: u64,
    /// Notifications cancelled.
    pub cancelled: u64,
    /// `accepted == delivered + invalid + failed + cancelled`.
    pub balanced: bool,
    /// Answered 200 by the fakes (APNs + FCM).
    pub fake_delivered: u64,
    /// Distinct tokens the fakes delivered.
    pub fake_distinct: u64,
    /// Deliveries to a token already delivered.
    pub fake_duplicates: u64,
    /// From sending to the fakes' first delivery seen, in seconds.
    pub first_delivery_s: f64,
    /// From sending to the fakes' last delivery seen, in seconds.
    pub last_delivery_s: f64,
    /// Delivered per second from the last 2xx (first accepted) to the last delivery.
    pub rate: f64,
    /// Delivered per second from sending the requests to the last delivery.
    pub rate_from_send: f64,
    /// When the fakes' delivered counter reached p% of its final value, in seconds from
    /// sending: the delivery latency of the p-th percentile notification.
    pub latency_s: BTreeMap<String, f64>,
    /// (seconds from sending, fakes' delivered counter) as polled.
    pub timeline: Vec<(f64, u64)>,
}

/// Single-notification requests through the front, many at once.
#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    /// Concurrent connections (each one request at a time).
    pub connections: usize,
    /// Wall time of the load, in seconds.
    pub seconds: f64,
    /// Requests sent.
    pub requests: u64,
    /// Answered 2xx.
    pub accepted_requests: u64,
    /// Answered otherwise (by status).
    pub rejected: BTreeMap<u16, u64>,
    /// Transport errors.
    pub errors: u64,
    /// `accepted_requests / seconds`.
    pub rate: f64,
    /// Request latency percentiles (p50, p99, p999, max), in milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    /// Notifications accepted (sum of `accepted`).
    pub accepted: u64,
    /// The controller's counters once nothing is pending: delivered.
    pub delivered: u64,
    /// ... and failed or invalid.
    pub errored: u64,
    /// `accepted == delivered + errored` once nothing is pending.
    pub balanced: bool,
    /// Answered 200 by the fakes.
    pub fake_delivered: u64,
    /// From the first request to the fakes' last delivery, in seconds.
    pub drain_s: f64,
    /// `accepted / drain_s`: the rate at which the system took in and delivered, sustained
    /// (a system that accepts fast but delivers later shows it here).
    pub delivered_rate: f64,
    /// (seconds from the start, 2xx answers so far) as polled.
    pub timeline: Vec<(f64, u64)>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// 1-based.
    pub run: usize,
    /// The 1-minute load average when the run began.
    pub load_before: f64,
    /// The raw HTTP/2 limit, measured first.
    pub ceiling: Option<CeilingResult>,
    /// The broadcast workload.
    pub broadcast: Option<BroadcastResult>,
    /// The ingest workload.
    pub ingest: Option<IngestResult>,
    /// The engine's headline rate: delivered/s (broadcast) or accepted requests/s (ingest).
    pub engine_rate: Option<f64>,
    /// Broadcast delivered/s over the ceiling's delivered/s.
    pub ratio: Option<f64>,
    /// The ceiling's CPU per notification over the broadcast's whole-system CPU per
    /// notification: the ratio the rates would have on a machine the run had to itself and
    /// saturated (steadier than `ratio` when other processes compete for the cores).
    pub cpu_ratio: Option<f64>,
    /// Notifications the engine workload delivered (the CPU figures' divisor).
    pub notifications: u64,
    /// Each part's CPU over the engine workload and its peak RSS.
    pub usage: Vec<Usage>,
    /// Every part of the system under test (fakes included, bench excluded) per notification.
    pub system_cpu_us_per_notification: Option<f64>,
    /// Cumulative CPU of each part during the engine workload.
    pub cpu_timeline: Vec<CpuSample>,
    /// Cores other processes on the machine kept busy during the engine workload.
    pub other_load_cores: Option<f64>,
    /// Each host's CPU over the engine workload (`--topology hosts`; empty otherwise).
    pub hosts: Vec<HostUsage>,
}

/// Medians over the runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Runs summarised.
    pub runs: usize,
    /// Median engine rate.
    pub engine_rate: Option<f64>,
    /// Median ceiling rate.
    pub ceiling_rate: Option<f64>,
    /// Median of each run's ratio.
    pub ratio: Option<f64>,
    /// Median of each run's CPU ratio.
    pub cpu_ratio: Option<f64>,
    /// Median cores other processes kept busy during the engine workload.
    pub other_load_cores: Option<f64>,
    /// Median broadcast acceptance time.
    pub accept_s: Option<f64>,
    /// Median whole-system CPU per notification.
    pub system_cpu_us_per_notification: Option<f64>,
    /// Median ceiling (client + fake) CPU per notification.
    pub ceiling_cpu_us_per_notification: Option<f64>,
    /// Median CPU per notification of each part.
    pub cpu_us_per_notification: BTreeMap<String, f64>,
    /// Largest peak RSS of each part over the runs, in bytes.
    pub peak_rss_bytes: BTreeMap<String, u64>,
    /// Median CPU per notification of each host (`--topology hosts`).
    pub host_cpu_us_per_notification: BTreeMap<String, f64>,
    /// Median cores each host kept busy during the engine workload (`--topology hosts`).
    pub host_cores: BTreeMap<String, f64>,
    /// Median broadcast latency percentiles, in seconds from sending.
    pub broadcast_latency_s: BTreeMap<String, f64>,
    /// Median ingest latency percentiles, in milliseconds.
    pub ingest_latency_ms: BTreeMap<String, f64>,
    /// Median ingest rate from the first request to the last delivery.
    pub ingest_delivered_rate: Option<f64>,
    /// Every run balanced (accepted = delivered + invalid + failed + cancelled).
    pub balanced: bool,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

fn median_map<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for map in maps {
        for (key, value) in map {
            all.entry(key.clone()).or_default().push(*value);
        }
    }
    all.into_iter()
        .filter_map(|(key, values)| Some((key, median(values)?)))
        .collect()
}

/// Summarises `runs`.
pub fn summarise(runs: &[RunResult]) -> Summary {
    let of = |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let per_part: Vec<BTreeMap<String, f64>> = runs
        .iter()
        .map(|run| {
            run.usage
                .iter()
                .map(|u| (u.name.clone(), u.cpu_us_per_notification))
                .collect()
        })
        .collect();
    let mut peak_rss_bytes: BTreeMap<String, u64> = BTreeMap::new();
    for usage in runs.iter().flat_map(|run| &run.usage) {
        if let Some(rss) = usage.peak_rss_bytes {
            let entry = peak_rss_bytes.entry(usage.name.clone()).or_default();
            *entry = (*entry).max(rss);
        }
    }
    let per_host = |field: fn(&HostUsage) -> f64| -> BTreeMap<String, f64> {
        let maps: Vec<BTreeMap<String, f64>> = runs
            .iter()
            .map(|run| {
                run.hosts
                    .iter()
                    .map(|h| (h.name.clone(), field(h)))
                    .collect()
            })
            .collect();
        median_map(maps.iter())
    };
    Summary {
        runs: runs.len(),
        engine_rate: of(&|r| r.engine_rate),
        ceiling_rate: of(&|r| r.ceiling.as_ref().map(|c| c.rate)),
        ratio: of(&|r| r.ratio),
        cpu_ratio: of(&|r| r.cpu_ratio),
        other_load_cores: of(&|r| r.other_load_cores),
        accept_s: of(&|r| r.broadcast.as_ref().map(|b| b.accept_s)),
        system_cpu_us_per_notification: of(&|r| r.system_cpu_us_per_notification),
        ceiling_cpu_us_per_notification: of(&|r| {
            r.ceiling.as_ref().map(|c| c.cpu_us_per_notification)
        }),
        cpu_us_per_notification: median_map(per_part.iter()),
        peak_rss_bytes,
        host_cpu_us_per_notification: per_host(|h| h.cpu_us_per_notification),
        host_cores: per_host(|h| h.cores),
        broadcast_latency_s: median_map(
            runs.iter()
                .filter_map(|r| r.broadcast.as_ref().map(|b| &b.latency_s)),
        ),
        ingest_delivered_rate: of(&|r| r.ingest.as_ref().map(|i| i.delivered_rate)),
        ingest_latency_ms: median_map(
            runs.iter()
                .filter_map(|r| r.ingest.as_ref().map(|i| &i.latency_ms)),
        ),
        balanced: runs.iter().all(|r| {
            r.broadcast.as_ref().is_none_or(|b| b.balanced)
                && r.ingest.as_ref().is_none_or(|i| i.balanced)
        }),
    }
}

fn opt(value: Option<f64>, precision: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"))
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// Prints one line per run as it finishes.
pub fn print_run(run: &RunResult) {
    let mut line = format!("run {:>2}:", run.run);
    if let Some(c) = &run.ceiling {
        line += &format!(
            " ceiling {:>8.0}/s ({:.2} CPU-µs/n)",
            c.rate, c.cpu_us_per_notification
        );
    }
    if let Some(b) = &run.broadcast {
        line += &format!(
            " | broadcast {:>8.0}/s, accepted in {:.2} s, {} balanced",
            b.rate,
            b.accept_s,
            if b.balanced { "" } else { "NOT" }
        );
    }
    if let Some(i) = &run.ingest {
        line += &format!(
            " | ingest {:>7.0} req/s, p99 {} ms, all delivered at {:.0}/s",
            i.rate,
            opt(i.latency_ms.get("p99").copied(), 2),
            i.delivered_rate
        );
    }
    if let Some(ratio) = run.ratio {
        line += &format!(" | ratio {ratio:.2}");
    }
    if let Some(cpu) = run.system_cpu_us_per_notification {
        line += &format!(" | system {cpu:.2} CPU-µs/n");
    }
    let others = run
        .other_load_cores
        .or(run.ceiling.as_ref().map(|c| c.other_load_cores));
    line += &format!(" (others busy {} cores)", opt(others, 2));
    println!("{line}");
}

/// Prints the medians and the per-part table.
pub fn print_summary(summary: &Summary, workload: &str, topology: &str) {
    println!();
    println!(
        "{workload} / {topology}: medians of {} run(s)",
        summary.runs
    );
    let rate_unit = if workload == "ingest" {
        "req/s"
    } else {
        "delivered/s"
    };
    println!(
        "  engine        {:>12} {rate_unit}",
        opt(summary.engine_rate, 0)
    );
    println!(
        "  ceiling       {:>12} delivered/s  ({} CPU-µs per notification, client + fake)",
        opt(summary.ceiling_rate, 0),
        opt(summary.ceiling_cpu_us_per_notification, 2)
    );
    println!(
        "  ratio         {:>12}  (engine/ceiling delivered/s; by CPU per notification: {})",
        opt(summary.ratio, 3),
        opt(summary.cpu_ratio, 3)
    );
    println!(
        "  others busy   {:>12} cores (other processes on the machine meanwhile)",
        opt(summary.other_load_cores, 2)
    );
    if summary.ingest_delivered_rate.is_some() {
        println!(
            "  delivered     {:>12} notifications/s, first request to last delivery",
            opt(summary.ingest_delivered_rate, 0)
        );
    }
    if summary.accept_s.is_some() {
        println!("  accepted in   {:>12} s", opt(summary.accept_s, 3));
    }
    println!(
        "  system CPU    {:>12} µs per notification (every part, fakes included, bench excluded)",
        opt(summary.system_cpu_us_per_notification, 2)
    );
    for (name, value) in &summary.broadcast_latency_s {
        println!("  latency {name:<5} {value:>12.3} s after sending");
    }
    for (name, value) in &summary.ingest_latency_ms {
        println!("  latency {name:<5} {value:>12.3} ms");
    }
    println!(
        "  counts        {:>12}",
        if summary.balanced {
            "balanced"
        } else {
            "NOT BALANCED"
        }
    );
    println!();
    println!(
        "  {:<16} {:>14} {:>14}",
        "part", "CPU-µs/notif", "peak RSS MB"
    );
    let names: std::collections::BTreeSet<&String> = summary
        .cpu_us_per_notification
        .keys()
        .chain(summary.peak_rss_bytes.keys())
        .collect();
    for name in names {
        println!(
            "  {:<16} {:>14} {:>14}",
            name,
            opt(summary.cpu_us_per_notification.get(name).copied(), 2),
            summary
                .peak_rss_bytes
                .get(name)
                .map_or_else(|| "-".to_owned(), |b| mb(*b))
        );
    }
    if !summary.host_cpu_us_per_notification.is_empty() {
        println!();
        println!(
            "  {:<16} {:>14} {:>14}",
            "host", "CPU-µs/notif", "cores busy"
        );
        for (name, value) in &summary.host_cpu_us_per_notification {
            println!(
                "  {:<16} {:>14.2} {:>14}",
                name,
                value,
                opt(summary.host_cores.get(name).copied(), 2)
            );
        }
    }
}

/// Everything a bench invocation writes with `--json`.
#[derive(Debug, Serialize)]
pub struct BenchJson<'a> {
    /// The workload.
    pub workload: &'a str,
    /// The topology.
    pub topology: &'a str,
    /// The command line.
    pub command: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Each run.
    pub runs: &'a [RunResult],
    /// Medians.
    pub summary: &'a Summary,
}

/// Writes `json` to `path`, pretty-printed.
pub fn write_json(path: &Path, json: &BenchJson<'_>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(json)?;
    std::fs::write(path, text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        for (values, expected) in [
            (vec![], None),
            (vec![3.0], Some(3.0)),
            (vec![3.0, 1.0], Some(2.0)),
            (vec![5.0, 1.0, 3.0], Some(3.0)),
            (vec![f64::NAN, 1.0, 3.0], Some(2.0)),
        ] {
            assert_eq!(median(values.clone()), expected, "{values:?}");
        }
    }
}
