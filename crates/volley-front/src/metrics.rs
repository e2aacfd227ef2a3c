//! Counters for `/metrics`: fixed arrays of atomics indexed by route, status, app and reason,
//! so that counting a request takes no lock and no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use volley_contracts::{ClusterStats, LatencyStat, Platform, LATENCY_BUCKETS_MS};

use crate::error::Code;

/// The routes the front serves, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Notifications,
    JobStatus,
    JobCancel,
    InvalidTokens,
    Gorush,
    Gaurun,
    StatApp,
    StatRuntime,
    StatGo,
    SysStats,
    ConfigApp,
    ApiConfig,
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Other,
}

impl Route {
    const ALL: [Route; 17] = [
        Route::Notifications,
        Route::JobStatus,
        Route::JobCancel,
        Route::InvalidTokens,
        Route::Gorush,
        Route::Gaurun,
        Route::StatApp,
        Route::StatRuntime,
        Route::StatGo,
        Route::SysStats,
        Route::ConfigApp,
        Route::ApiConfig,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::OpenApi,
        Route::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Notifications => "notifications",
            Route::JobStatus => "job_status",
            Route::JobCancel => "job_cancel",
            Route::InvalidTokens => "invalid_tokens",
            Route::Gorush => "gorush_push",
            Route::Gaurun => "gaurun_push",
            Route::StatApp => "stat_app",
            Route::StatRuntime => "stat_runtime",
            Route::StatGo => "stat_go",
            Route::SysStats => "sys_stats",
            Route::ConfigApp => "config_app",
            Route::ApiConfig => "api_config",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::OpenApi => "openapi",
            Route::Other => "other",
        }
    }

    /// The route of a matched path template and method.
    pub(crate) fn of(path: Option<&str>, method: &http::Method) -> Route {
        match (path, *method == http::Method::DELETE) {
            (Some("/v1/apps/{app}/notifications"), _) => Route::Notifications,
            (Some("/v1/jobs/{id}"), false) => Route::JobStatus,
            (Some("/v1/jobs/{id}"), true) => Route::JobCancel,
            (Some("/v1/jobs/{id}/invalid-tokens"), _) => Route::InvalidTokens,
            (Some("/api/push"), _) => Route::Gorush,
            (Some("/push"), _) => Route::Gaurun,
            (Some("/stat/app" | "/api/stat/app"), _) => Route::StatApp,
            (Some("/stat/runtime"), _) => Route::StatRuntime,
            (Some("/stat/go" | "/api/stat/go"), _) => Route::StatGo,
            (Some("/sys/stats"), _) => Route::SysStats,
            (Some("/config/app"), _) => Route::ConfigApp,
            (Some("/api/config"), _) => Route::ApiConfig,
            (Some("/healthz"), _) => Route::Healthz,
            (Some("/readyz"), _) => Route::Readyz,
            (Some("/metrics"), _) => Route::Metrics,
            (Some("/openapi.json"), _) => Route::OpenApi,
            _ => Route::Other,
        }
    }
}

/// The statuses counted one by one; anything else is counted as `other`.
const STATUSES: [u16; 14] = [
    200, 202, 400, 401, 403, 404, 405, 408, 409, 413, 422, 429, 500, 503,
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

const ROUTES: usize = Route::ALL.len();
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Every counter of the front.
pub(crate) struct Metrics {
    requests: [[AtomicU64; STATUS_SLOTS]; ROUTES],
    rejected: [AtomicU64; Code::ALL.len()],
    /// Per app (in configuration order), per platform.
    accepted: Vec<[AtomicU64; Platform::ALL.len()]>,
    apps: Vec<String>,
    /// Time spent answering every request, in nanoseconds (gorush's `/sys/stats`).
    response_nanos: AtomicU64,
}

/// Every answer so far: by status, how many, and the time spent on them.
pub(crate) struct Answered {
    /// `(status, count)`, non-zero ones; `None` stands for the statuses not counted one by one.
    pub by_status: Vec<(Option<u16>, u64)>,
    pub count: u64,
    pub nanos: u64,
}

impl Metrics {
    pub(crate) fn new(apps: Vec<String>) -> Metrics {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            accepted: apps.iter().map(|_| Default::default()).collect(),
            apps,
            response_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn request(&self, route: Route, status: u16, took: std::time::Duration) {
        let route = Route::ALL.iter().position(|r| *r == route).unwrap_or(0);
        self.requests[route][status_index(status)].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.response_nanos.fetch_add(nanos, Relaxed);
    }

    /// Every answer so far, over all routes.
    pub(crate) fn answered(&self) -> Answered {
        let mut by_status = Vec::new();
        let mut count = 0;
        for slot in 0..STATUS_SLOTS {
            let n: u64 = self
                .requests
                .iter()
                .map(|row| row[slot].load(Relaxed))
                .sum();
            if n > 0 {
                by_status.push((STATUSES.get(slot).copied(), n));
                count += n;
            }
        }
        Answered {
            by_status,
            count,
            nanos: self.response_nanos.load(Relaxed),
        }
    }

    pub(crate) fn rejected(&self, code: Code) {
        self.rejected[code.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn accepted(&self, app: usize, platform: Platform, count: usize) {
        if let Some(slots) = self.accepted.get(app) {
            slots[platform.index()].fetch_add(count as u64, Relaxed);
        }
    }

    /// The counters in Prometheus' text format, with the controller's `stats` when it
    /// answered.
    pub(crate) fn render(&self, stats: Option<&ClusterStats>) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP volley_front_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE volley_front_requests_total counter\n");
        for (route, row) in Route::ALL.iter().zip(&self.requests) {
            for (slot, counter) in row.iter().enumerate() {
                let value = counter.load(Relaxed);
                if value == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(slot)
                    .map(u16::to_string)
                    .unwrap_or_else(|| "other".into());
                let _ = writeln!(
                    out,
                    "volley_front_requests_total{{route=\"{}\",status=\"{status}\"}} {value}",
                    route.as_str()
                );
            }
        }
        out.push_str("# HELP volley_front_accepted_notifications_total Notifications handed to the controller, by app and platform.\n");
        out.push_str("# TYPE volley_front_accepted_notifications_total counter\n");
        for (app, slots) in self.apps.iter().zip(&self.accepted) {
            for platform in Platform::ALL {
                let _ = writeln!(
                    out,
                    "volley_front_accepted_notifications_total{{app=\"{}\",platform=\"{platform}\"}} {}",
                    escape(app),
                    slots[platform.index()].load(Relaxed)
                );
            }
        }
        out.push_str("# HELP volley_front_rejected_total Requests refused, by reason.\n");
        out.push_str("# TYPE volley_front_rejected_total counter\n");
        for code in Code::ALL {
            let _ = writeln!(
                out,
                "volley_front_rejected_total{{reason=\"{code}\"}} {}",
                self.rejected[code.index()].load(Relaxed)
            );
        }
        if let Some(stats) = stats {
            render_cluster(&mut out, stats);
        }
        out
    }

    /// Requests refused so far, by reason (non-zero ones).
    pub(crate) fn rejections(&self) -> Vec<(&'static str, u64)> {
        Code::ALL
            .iter()
            .map(|code| (code.as_str(), self.rejected[code.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Reads one gauge of a scheduler queue.
type QueueGauge = fn(&volley_contracts::QueueStat) -> u64;

/// The controller's gauges, counters and histograms.
fn render_cluster(out: &mut String, stats: &ClusterStats) {
    let gauges = [
        (
            "volley_queue_depth_chunks",
            "Chunks waiting in the controller's scheduler queues, over every app.",
            stats.queue_usage,
        ),
        (
            "volley_pending_notifications",
            "Notifications accepted and not final yet.",
            stats.pending_notifications,
        ),
        (
            "volley_max_pending_notifications",
            "Pending notifications above which submissions are refused with 503.",
            stats.max_pending_notifications,
        ),
        (
            "volley_active_jobs",
            "Jobs not final yet.",
            stats.active_jobs,
        ),
        (
            "volley_agents",
            "Registered agents.",
            stats.agents.len() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let counters = [
        (
            "volley_controller_links_refused_total",
            "Links to the controller refused at the TLS handshake (no certificate, another CA, expired, too slow).",
            stats.links_refused,
        ),
        (
            "volley_controller_calls_denied_total",
            "Calls to the controller refused because the caller's certificate names another role.",
            stats.calls_denied,
        ),
        (
            "volley_controller_certificate_reload_failures_total",
            "Reloads of the controller's certificate files that failed (it kept its certificate).",
            stats.certificate_reload_failures,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    if let Some(term) = stats.controller.term {
        header(
            out,
            "volley_controller_leader_term",
            "gauge",
            "The leading controller's term (PostgreSQL store): it grows by one at each takeover.",
        );
        let _ = writeln!(out, "volley_controller_leader_term {term}");
    }
    let expiries = stats
        .certificate_expires_at
        .map(|at| ("controller", "", at))
        .into_iter()
        .chain(stats.agents.iter().filter_map(|agent| {
            Some(("agent", agent.name.as_str(), agent.certificate_expires_at?))
        }));
    header(
        out,
        "volley_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the link certificate of the controller and of each registered agent expires \
         (the front's own: volley_front_certificate_expiry_timestamp_seconds).",
    );
    for (role, name, at) in expiries {
        let _ = writeln!(
            out,
            "volley_certificate_expiry_timestamp_seconds{{role=\"{role}\",name=\"{}\"}} {at}",
            escape(name)
        );
    }
    let per_queue: [(&str, &str, QueueGauge); 4] = [
        (
            "volley_app_queue_chunks",
            "Chunks waiting in the scheduler's queue of an app and platform.",
            |q| q.chunks,
        ),
        (
            "volley_app_queue_notifications",
            "Notifications in those chunks.",
            |q| q.notifications,
        ),
        (
            "volley_app_queue_waiting_for_agent",
            "1 while no registered agent declared the app and platform and its chunks wait.",
            |q| u64::from(q.waiting_for_agent),
        ),
        (
            "volley_app_queue_paused_agents",
            "Agents that paused the app and platform (its provider's circuit is open there).",
            |q| u64::from(q.paused_agents),
        ),
    ];
    for (name, help, value) in per_queue {
        header(out, name, "gauge", help);
        for queue in &stats.queues {
            let _ = writeln!(
                out,
                "{name}{{app=\"{}\",platform=\"{}\"}} {}",
                escape(&queue.app),
                queue.platform,
                value(queue)
            );
        }
    }
    header(
        out,
        "volley_controller_rejected_total",
        "counter",
        "Submissions the controller refused, by reason.",
    );
    for rejection in &stats.rejections {
        let _ = writeln!(
            out,
            "volley_controller_rejected_total{{reason=\"{}\"}} {}",
            escape(&rejection.reason),
            rejection.count
        );
    }
    header(
        out,
        "volley_notifications_total",
        "counter",
        "Notifications with a final outcome, by app, platform, outcome, class and reason.",
    );
    for o in &stats.outcomes {
        let _ = writeln!(
            out,
            "volley_notifications_total{{app=\"{}\",platform=\"{}\",outcome=\"{}\",class=\"{}\",reason=\"{}\"}} {}",
            escape(&o.app),
            o.platform,
            escape(&o.outcome),
            escape(&o.class),
            escape(&o.reason),
            o.count
        );
    }
    histograms(
        out,
        "volley_job_latency_seconds",
        "Time from a job's acceptance to its last final outcome.",
        &stats.job_latency,
    );
    histograms(
        out,
        "volley_chunk_latency_seconds",
        "Time from handing a chunk to an agent to its report.",
        &stats.chunk_latency,
    );
    header(
        out,
        "volley_webhook_pending_batches",
        "gauge",
        "Invalid-token batches waiting for the app's webhook to acknowledge them.",
    );
    for w in &stats.webhooks {
        let _ = writeln!(
            out,
            "volley_webhook_pending_batches{{app=\"{}\"}} {}",
            escape(&w.app),
            w.pending_batches
        );
    }
    header(
        out,
        "volley_webhook_delivered_batches_total",
        "counter",
        "Invalid-token batches the app's webhook acknowledged.",
    );
    for w in &stats.webhooks {
        let _ = writeln!(
            out,
            "volley_webhook_delivered_batches_total{{app=\"{}\"}} {}",
            escape(&w.app),
            w.delivered_batches
        );
    }
    header(
        out,
        "volley_webhook_failed_attempts_total",
        "counter",
        "Webhook POSTs that failed and were retried.",
    );
    for w in &stats.webhooks {
        let _ = writeln!(
            out,
            "volley_webhook_failed_attempts_total{{app=\"{}\"}} {}",
            escape(&w.app),
            w.failed_attempts
        );
    }
}

/// Prometheus histograms (cumulative `le` buckets in seconds, `_sum`, `_count`).
fn histograms(out: &mut String, name: &str, help: &str, stats: &[LatencyStat]) {
    header(out, name, "histogram", help);
    for stat in stats {
        let labels = match stat.platform {
            Some(platform) => format!("app=\"{}\",platform=\"{platform}\"", escape(&stat.app)),
            None => format!("app=\"{}\"", escape(&stat.app)),
        };
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            cumulative += stat.histogram.buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *bound as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            stat.histogram.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            stat.histogram.sum_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", stat.histogram.count);
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_render_as_prometheus_text() {
        let metrics = Metrics::new(vec!["shop".into()]);
        metrics.request(Route::Notifications, 202, Duration::ZERO);
        metrics.request(Route::Notifications, 202, Duration::ZERO);
        metrics.request(Route::Gorush, 418, Duration::ZERO);
        metrics.rejected(Code::InvalidToken);
        metrics.accepted(0, Platform::Fcm, 7);
        let mut histogram = volley_contracts::Histogram::default();
        histogram.observe(7);
        histogram.observe(2_000);
        let stats = ClusterStats {
            queue_usage: 3,
            pending_notifications: 1000,
            active_jobs: 1,
            agents: vec![volley_contracts::AgentStat {
                id: volley_contracts::AgentId(4),
                name: "a1".into(),
                addr: "10.0.0.4:7000".into(),
                in_flight: 1,
                chunks_done: 9,
                certificate_expires_at: Some(1_900_000_000),
                ops_addr: "127.0.0.1:2".into(),
                paused: Vec::new(),
            }],
            apps: Vec::new(),
            chunks_redispatched: 0,
            max_pending_notifications: 5000,
            rejections: vec![volley_contracts::RejectionCount {
                reason: "overloaded".into(),
                count: 4,
            }],
            outcomes: vec![volley_contracts::OutcomeCount {
                app: "shop".into(),
                platform: Platform::Apns,
                outcome: "invalid".into(),
                class: String::new(),
                reason: "Unregistered".into(),
                count: 2,
            }],
            job_latency: vec![LatencyStat {
                app: "shop".into(),
                platform: None,
                histogram,
            }],
            chunk_latency: Vec::new(),
            webhooks: Vec::new(),
            queues: vec![volley_contracts::QueueStat {
                app: "shop".into(),
                platform: Platform::Fcm,
                chunks: 2,
                notifications: 7,
                in_flight: 0,
                waiting_for_agent: true,
                paused_agents: 0,
                waiting: Some("waiting_for_agent: no agent serves app \"shop\" for fcm".into()),
            }],
            links_refused: 3,
            calls_denied: 1,
            certificate_expires_at: Some(1_900_000_100),
            certificate_reload_failures: 2,
            controller: Default::default(),
        };
        let text = metrics.render(Some(&stats));
        for line in [
            "volley_controller_links_refused_total 3",
            "volley_controller_calls_denied_total 1",
            "volley_controller_certificate_reload_failures_total 2",
            "volley_certificate_expiry_timestamp_seconds{role=\"controller\",name=\"\"} 1900000100",
            "volley_certificate_expiry_timestamp_seconds{role=\"agent\",name=\"a1\"} 1900000000",
            "volley_controller_rejected_total{reason=\"overloaded\"} 4",
            "volley_notifications_total{app=\"shop\",platform=\"apns\",outcome=\"invalid\",class=\"\",reason=\"Unregistered\"} 2",
            "volley_job_latency_seconds_bucket{app=\"shop\",le=\"0.005\"} 0",
            "volley_job_latency_seconds_bucket{app=\"shop\",le=\"0.01\"} 1",
            "volley_job_latency_seconds_bucket{app=\"shop\",le=\"2.5\"} 2",
            "volley_job_latency_seconds_bucket{app=\"shop\",le=\"+Inf\"} 2",
            "volley_job_latency_seconds_sum{app=\"shop\"} 2.007",
            "volley_max_pending_notifications 5000",
            "volley_front_requests_total{route=\"notifications\",status=\"202\"} 2",
            "volley_front_requests_total{route=\"gorush_push\",status=\"other\"} 1",
            "volley_front_rejected_total{reason=\"invalid_token\"} 1",
            "volley_front_accepted_notifications_total{app=\"shop\",platform=\"fcm\"} 7",
            "volley_queue_depth_chunks 3",
            "volley_app_queue_waiting_for_agent{app=\"shop\",platform=\"fcm\"} 1",
            "volley_app_queue_chunks{app=\"shop\",platform=\"fcm\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
