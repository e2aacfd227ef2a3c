//! The front's metrics: fixed arrays of atomics indexed by route, status, app and reason, so
//! that counting a request takes no lock and no allocation, exposed through
//! `prometheus-client` on `/metrics` (the API listener's and the ops port's). The front
//! exports only what it counts itself: the controller's and the agents' metrics are on their
//! own ops ports, so that a sum over the fronts counts each request once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use volley_contracts::Platform;
use volley_ops::encode::{counter, counters, gauge};
use volley_ops::AtomicHistogram;

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
    Dashboard,
    Other,
}

impl Route {
    const ALL: [Route; 18] = [
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
        Route::Dashboard,
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
            Route::Dashboard => "dashboard",
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
            (Some(path), _) if path.starts_with("/dashboard") => Route::Dashboard,
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

/// The status labels, by slot: the statuses counted one by one, then `other`.
const STATUS_LABELS: [&str; STATUS_SLOTS] = [
    "200", "202", "400", "401", "403", "404", "405", "408", "409", "413", "422", "429", "500",
    "503", "other",
];

const ROUTES: usize = Route::ALL.len();
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Every counter of the front. They are plain atomics, indexed by closed sets, so that
/// counting a request takes no lock and no allocation; the ops port's registry reads them at
/// scrape time ([`Metrics`] is a [`Collector`]).
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: [[AtomicU64; STATUS_SLOTS]; ROUTES],
    /// Time to answer, per route.
    latency: [AtomicHistogram; ROUTES],
    rejected: [AtomicU64; Code::ALL.len()],
    /// Per app (in configuration order), per platform.
    accepted: Vec<[AtomicU64; Platform::ALL.len()]>,
    apps: Vec<String>,
    /// Time spent answering every request, in nanoseconds (gorush's `/sys/stats`).
    response_nanos: AtomicU64,
    /// Connections open on the API listener.
    pub(crate) connections: AtomicUsize,
    /// Large bodies being read or parsed (`front.max_large_bodies` caps them).
    pub(crate) large_bodies: AtomicUsize,
    /// Request bodies being read.
    pub(crate) bodies_in_flight: AtomicUsize,
    /// Connections refused at `front.max_connections`.
    pub(crate) connections_refused: AtomicU64,
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
            latency: std::array::from_fn(|_| AtomicHistogram::latency()),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            accepted: apps.iter().map(|_| Default::default()).collect(),
            apps,
            response_nanos: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            large_bodies: AtomicUsize::new(0),
            bodies_in_flight: AtomicUsize::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn request(&self, route: Route, status: u16, took: std::time::Duration) {
        let route = Route::ALL.iter().position(|r| *r == route).unwrap_or(0);
        self.requests[route][status_index(status)].fetch_add(1, Relaxed);
        self.latency[route].observe(took);
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

    /// Requests refused so far, by reason (non-zero ones).
    pub(crate) fn rejections(&self) -> Vec<(&'static str, u64)> {
        Code::ALL
            .iter()
            .map(|code| (code.as_str(), self.rejected[code.index()].load(Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

fn count(value: &AtomicUsize) -> i64 {
    i64::try_from(value.load(Relaxed)).unwrap_or(i64::MAX)
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let metrics = self;
        counters(
            &mut encoder,
            "volley_front_requests",
            "HTTP requests answered by this front, by route and status",
            Route::ALL
                .iter()
                .zip(&metrics.requests)
                .flat_map(|(route, row)| {
                    row.iter().enumerate().filter_map(move |(slot, counter)| {
                        let value = counter.load(Relaxed);
                        let status = STATUS_LABELS[slot];
                        (value > 0)
                            .then_some(([("route", route.as_str()), ("status", status)], value))
                    })
                }),
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "volley_front_request_duration_seconds",
                "Time from a request's arrival to its answer, by route",
                None,
                MetricType::Histogram,
            )?;
            for (route, histogram) in Route::ALL.iter().zip(&metrics.latency) {
                if histogram.count() > 0 {
                    histogram.encode(family.encode_family(&[("route", route.as_str())])?)?;
                }
            }
        }
        counters(
            &mut encoder,
            "volley_front_accepted_notifications",
            "Notifications this front handed to the controller (stored before the answer), by app and platform",
            metrics.apps.iter().zip(&metrics.accepted).flat_map(|(app, slots)| {
                Platform::ALL.into_iter().map(move |platform| {
                    (
                        [("app", app.as_str()), ("platform", platform.as_str())],
                        slots[platform.index()].load(Relaxed),
                    )
                })
            }),
        )?;
        counters(
            &mut encoder,
            "volley_front_rejected",
            "Requests this front refused, by error code",
            Code::ALL.iter().map(|code| {
                (
                    [("reason", code.as_str())],
                    metrics.rejected[code.index()].load(Relaxed),
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "volley_front_connections",
            "Connections open on the API listener",
            count(&metrics.connections),
        )?;
        counter(
            &mut encoder,
            "volley_front_connections_refused",
            "Connections answered 503 and closed at front.max_connections",
            metrics.connections_refused.load(Relaxed),
        )?;
        gauge(
            &mut encoder,
            "volley_front_bodies_in_flight",
            "Request bodies being read",
            count(&metrics.bodies_in_flight),
        )?;
        gauge(
            &mut encoder,
            "volley_front_large_bodies",
            "Large request bodies being read or parsed (front.max_large_bodies caps them)",
            count(&metrics.large_bodies),
        )?;
        Ok(())
    }
}

/// The front's state as gauges: draining, its link certificate. It holds the state weakly:
/// the state holds the registry that holds it.
#[derive(Debug)]
pub(crate) struct StateGauges(pub(crate) std::sync::Weak<crate::Inner>);

impl Collector for StateGauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let state = crate::FrontState { inner };
        gauge(
            &mut encoder,
            "volley_front_draining",
            "1 while this front drains (it refuses new work)",
            i64::from(state.is_draining()),
        )?;
        if let Some(not_after) = state.certificate_not_after() {
            gauge(
                &mut encoder,
                "volley_front_certificate_expiry_timestamp_seconds",
                "When this front's link certificate expires, in seconds since the epoch",
                not_after,
            )?;
            counter(
                &mut encoder,
                "volley_front_certificate_reload_failures",
                "Reloads of this front's certificate files that failed (it kept its certificate)",
                state.certificate_reload_failures(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_render_as_prometheus_text() {
        let metrics = Metrics::new(vec!["shop".into()]);
        metrics.request(Route::Notifications, 202, Duration::from_millis(3));
        metrics.request(Route::Notifications, 202, Duration::from_millis(30));
        metrics.request(Route::Gorush, 418, Duration::ZERO);
        metrics.rejected(Code::InvalidToken);
        metrics.accepted(0, Platform::Fcm, 7);
        metrics.bodies_in_flight.fetch_add(2, Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(std::sync::Arc::new(metrics)));
        let ops = volley_ops::Ops::new(
            "front",
            registry,
            std::sync::Arc::new(|| Box::pin(async { Ok(Default::default()) })),
        );
        let text = ops.render();
        for line in [
            "# TYPE volley_front_requests_total counter",
            "volley_front_requests_total{route=\"notifications\",status=\"202\"} 2",
            "volley_front_requests_total{route=\"gorush_push\",status=\"other\"} 1",
            "volley_front_rejected_total{reason=\"invalid_token\"} 1",
            "volley_front_accepted_notifications_total{app=\"shop\",platform=\"fcm\"} 7",
            "volley_front_request_duration_seconds_bucket{route=\"notifications\",le=\"0.005\"} 1",
            "volley_front_request_duration_seconds_count{route=\"notifications\"} 2",
            "volley_front_bodies_in_flight 2",
            "volley_front_connections 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // The controller's metrics are on the controller's port, not re-exported here.
        assert!(!text.contains("volley_notifications_total"), "{text}");
    }
}
