//! Counters for `/metrics`: fixed arrays of atomics indexed by route, status, app and reason,
//! so that counting a request takes no lock and no allocation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use volley_contracts::Platform;

use crate::error::Code;

/// The routes the front serves, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Notifications,
    JobStatus,
    JobCancel,
    Gorush,
    Gaurun,
    StatApp,
    StatRuntime,
    ConfigApp,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl Route {
    const ALL: [Route; 12] = [
        Route::Notifications,
        Route::JobStatus,
        Route::JobCancel,
        Route::Gorush,
        Route::Gaurun,
        Route::StatApp,
        Route::StatRuntime,
        Route::ConfigApp,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Notifications => "notifications",
            Route::JobStatus => "job_status",
            Route::JobCancel => "job_cancel",
            Route::Gorush => "gorush_push",
            Route::Gaurun => "gaurun_push",
            Route::StatApp => "stat_app",
            Route::StatRuntime => "stat_runtime",
            Route::ConfigApp => "config_app",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }

    /// The route of a matched path template and method.
    pub(crate) fn of(path: Option<&str>, method: &http::Method) -> Route {
        match (path, *method == http::Method::DELETE) {
            (Some("/v1/apps/{app}/notifications"), _) => Route::Notifications,
            (Some("/v1/jobs/{id}"), false) => Route::JobStatus,
            (Some("/v1/jobs/{id}"), true) => Route::JobCancel,
            (Some("/api/push"), _) => Route::Gorush,
            (Some("/push"), _) => Route::Gaurun,
            (Some("/stat/app" | "/api/stat/app"), _) => Route::StatApp,
            (Some("/stat/runtime"), _) => Route::StatRuntime,
            (Some("/config/app"), _) => Route::ConfigApp,
            (Some("/healthz"), _) => Route::Healthz,
            (Some("/readyz"), _) => Route::Readyz,
            (Some("/metrics"), _) => Route::Metrics,
            _ => Route::Other,
        }
    }
}

/// The statuses counted one by one; anything else is counted as `other`.
const STATUSES: [u16; 13] = [
    200, 202, 400, 401, 403, 404, 405, 409, 413, 422, 429, 500, 503,
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
    accepted: Vec<[AtomicU64; 2]>,
    apps: Vec<String>,
}

impl Metrics {
    pub(crate) fn new(apps: Vec<String>) -> Metrics {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            accepted: apps.iter().map(|_| Default::default()).collect(),
            apps,
        }
    }

    pub(crate) fn request(&self, route: Route, status: u16) {
        let route = Route::ALL.iter().position(|r| *r == route).unwrap_or(0);
        self.requests[route][status_index(status)].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, code: Code) {
        self.rejected[code.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn accepted(&self, app: usize, platform: Platform, count: usize) {
        if let Some(slots) = self.accepted.get(app) {
            slots[platform.index()].fetch_add(count as u64, Relaxed);
        }
    }

    /// The counters in Prometheus' text format, with `queue` (usage, capacity, pending
    /// notifications) when the controller answered.
    pub(crate) fn render(&self, queue: Option<(u64, u64, u64)>) -> String {
        let mut out = String::with_capacity(4096);
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
        if let Some((usage, max, pending)) = queue {
            out.push_str(
                "# HELP volley_queue_depth_chunks Chunks waiting in the controller's queue.\n",
            );
            out.push_str("# TYPE volley_queue_depth_chunks gauge\n");
            let _ = writeln!(out, "volley_queue_depth_chunks {usage}");
            out.push_str(
                "# HELP volley_queue_capacity_chunks Capacity of the controller's queue.\n",
            );
            out.push_str("# TYPE volley_queue_capacity_chunks gauge\n");
            let _ = writeln!(out, "volley_queue_capacity_chunks {max}");
            out.push_str(
                "# HELP volley_pending_notifications Notifications accepted and not final yet.\n",
            );
            out.push_str("# TYPE volley_pending_notifications gauge\n");
            let _ = writeln!(out, "volley_pending_notifications {pending}");
        }
        out
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

    #[test]
    fn counters_render_as_prometheus_text() {
        let metrics = Metrics::new(vec!["shop".into()]);
        metrics.request(Route::Notifications, 202);
        metrics.request(Route::Notifications, 202);
        metrics.request(Route::Gorush, 418);
        metrics.rejected(Code::InvalidToken);
        metrics.accepted(0, Platform::Fcm, 7);
        let text = metrics.render(Some((3, 256, 1000)));
        for line in [
            "volley_front_requests_total{route=\"notifications\",status=\"202\"} 2",
            "volley_front_requests_total{route=\"gorush_push\",status=\"other\"} 1",
            "volley_front_rejected_total{reason=\"invalid_token\"} 1",
            "volley_front_accepted_notifications_total{app=\"shop\",platform=\"fcm\"} 7",
            "volley_queue_depth_chunks 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
