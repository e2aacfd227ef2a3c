//! The operators' port of every role: `/metrics`, `/healthz` and `/readyz`.
//!
//! Each role (front, controller, agent) keeps its own [`Registry`] of the metrics it owns,
//! so that each counter lives on exactly one role and summing a metric over the fronts (or
//! the agents) counts each event once. The exposition is `prometheus-client`'s Prometheus
//! text format (version 0.0.4); the hot paths count with atomics only: counters are
//! `prometheus-client`'s, and latency histograms are [`AtomicHistogram`]s (the crate's own
//! histogram takes a lock per observation). What only the role's state knows at scrape time
//! (queue depths, breaker states) is read by a [`Collector`](prometheus_client::collector::Collector).
//!
//! Labels come from closed sets: routes, statuses, platforms, outcome classes, the app names
//! of the configuration, and provider reasons mapped by [`reason_label`] (anything else is
//! `other`). Free text never becomes a label.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};

pub use prometheus_client;

pub mod encode;
mod process;
mod reasons;

pub use process::ProcessCollector;
pub use reasons::{reason_label, KNOWN_REASONS};

/// Upper bounds of the latency histograms, in seconds (the `+Inf` bucket is implicit).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Upper bounds of the size histograms (batch sizes, in items).
pub const SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0,
];

/// A Prometheus histogram updated with atomics only: an observation is two or three relaxed
/// additions, with no lock and no allocation. Clones share the counts.
///
/// Values are whole numbers of a unit (nanoseconds for [`latency`](Self::latency), items
/// for [`sizes`](Self::sizes)); they are exposed multiplied by the unit's scale (seconds,
/// items).
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in units, ascending.
    bounds: Vec<u64>,
    /// Exposed upper bounds.
    exposed: Vec<f64>,
    /// Observations per bucket (not cumulative), the last one for `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in units.
    sum: AtomicU64,
    /// Exposed value of one unit.
    scale: f64,
}

impl AtomicHistogram {
    fn new(exposed: &[f64], scale: f64) -> AtomicHistogram {
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds: exposed.iter().map(|b| (b / scale).round() as u64).collect(),
                exposed: exposed.to_vec(),
                counts: (0..=exposed.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0),
                scale,
            }),
        }
    }

    /// A latency histogram over [`LATENCY_BUCKETS_SECONDS`], observed as durations.
    pub fn latency() -> AtomicHistogram {
        AtomicHistogram::new(&LATENCY_BUCKETS_SECONDS, 1e-9)
    }

    /// A size histogram over [`SIZE_BUCKETS`], observed as counts.
    pub fn sizes() -> AtomicHistogram {
        AtomicHistogram::new(&SIZE_BUCKETS, 1.0)
    }

    /// Records `value` units.
    pub fn observe_units(&self, value: u64) {
        let inner = &*self.inner;
        let slot = inner.bounds.partition_point(|bound| *bound < value);
        inner.counts[slot].fetch_add(1, Relaxed);
        add_saturating(&inner.sum, value);
    }

    /// Records a duration (for [`latency`](Self::latency) histograms).
    pub fn observe(&self, took: Duration) {
        self.observe_units(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records `count` observations of `value` units at once.
    pub fn observe_many(&self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let inner = &*self.inner;
        let slot = inner.bounds.partition_point(|bound| *bound < value);
        inner.counts[slot].fetch_add(count, Relaxed);
        add_saturating(&inner.sum, value.saturating_mul(count));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The sum of the observations, exposed (seconds for latencies).
    pub fn sum(&self) -> f64 {
        self.inner.sum.load(Relaxed) as f64 * self.inner.scale
    }
}

/// Adds without wrapping: a sum that wrapped would read as a counter reset. (At 400
/// requests in flight, nanoseconds fill 64 bits in about a year and a half.)
fn add_saturating(sum: &AtomicU64, value: u64) {
    let before = sum.fetch_add(value, Relaxed);
    if before.checked_add(value).is_none() {
        sum.store(u64::MAX, Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        // Per bucket, not cumulative: the encoder accumulates them.
        let mut total = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(inner.counts.len());
        for (slot, count) in inner.counts.iter().enumerate() {
            let count = count.load(Relaxed);
            total += count;
            let bound = inner.exposed.get(slot).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, count));
        }
        encoder.encode_histogram::<NoLabelSet>(self.sum(), total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A role's answer to `/readyz`: `Ok` with what it wants to show (its state), or `Err` with
/// why it is not ready.
pub type Readiness = Result<Map<String, Value>, String>;

/// Asks a role whether it is ready.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Readiness> + Send + Sync>;

/// What an ops port serves: the role's name, its metrics and its readiness.
#[derive(Clone)]
pub struct Ops {
    role: &'static str,
    registry: Arc<Registry>,
    ready: ReadyCheck,
}

impl Ops {
    /// The ops endpoints of `role` over `registry`, ready as `ready` says.
    pub fn new(role: &'static str, registry: Registry, ready: ReadyCheck) -> Ops {
        Ops {
            role,
            registry: Arc::new(registry),
            ready,
        }
    }

    /// The role's metrics in Prometheus' text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; a collector's error would leave a partial text.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        text
    }

    /// `/metrics`, `/healthz` and `/readyz`.
    pub fn router(&self) -> Router {
        let metrics = self.clone();
        let health = self.role;
        let ready = self.clone();
        Router::new()
            .route("/metrics", get(move || async move { metrics.metrics() }))
            .route(
                "/healthz",
                get(move || async move { Json(json!({"status": "ok", "role": health})) }),
            )
            .route("/readyz", get(move || async move { ready.readyz().await }))
    }

    fn metrics(&self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            self.render(),
        )
            .into_response()
    }

    async fn readyz(&self) -> Response {
        match (self.ready)().await {
            Ok(mut detail) => {
                detail.insert("status".into(), "ready".into());
                detail.insert("role".into(), self.role.into());
                (StatusCode::OK, Json(Value::Object(detail))).into_response()
            }
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(json!({"status": "not_ready", "role": self.role, "reason": reason})),
            )
                .into_response(),
        }
    }
}

/// Serves `router` (an [`Ops::router`], perhaps with more routes) on `listener` until `stop`
/// resolves. Unknown paths get a JSON 404. The "ops listening" line is logged when this is
/// called, before the returned future is spawned: it comes before the role's own start line.
pub fn serve(
    listener: tokio::net::TcpListener,
    role: &'static str,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, role, "ops listening: /metrics /healthz /readyz");
    }
    let router = router.fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": "no such endpoint on the ops port"}})),
        )
    });
    async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(%error, role, "the ops listener stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[test]
    fn histograms_and_counters_render_as_prometheus_text() {
        let mut registry = Registry::default();
        let latency =
            Family::<Vec<(&'static str, &'static str)>, AtomicHistogram>::new_with_constructor(
                AtomicHistogram::latency,
            );
        registry.register("volley_test_latency_seconds", "A latency", latency.clone());
        let counter: Counter = Counter::default();
        registry.register("volley_test_things", "Things", counter.clone());
        let h = latency.get_or_create_owned(&vec![("app", "shop")]);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe_many(7 * 1_000_000_000, 2);
        counter.inc_by(5);
        let ops = Ops::new(
            "test",
            registry,
            Arc::new(|| Box::pin(async { Ok(Map::new()) })),
        );
        let text = ops.render();
        for line in [
            "# TYPE volley_test_latency_seconds histogram",
            "volley_test_latency_seconds_bucket{app=\"shop\",le=\"0.0025\"} 0",
            "volley_test_latency_seconds_bucket{app=\"shop\",le=\"0.005\"} 1",
            "volley_test_latency_seconds_bucket{app=\"shop\",le=\"0.05\"} 2",
            "volley_test_latency_seconds_bucket{app=\"shop\",le=\"10\"} 4",
            "volley_test_latency_seconds_bucket{app=\"shop\",le=\"+Inf\"} 4",
            "volley_test_latency_seconds_count{app=\"shop\"} 4",
            "volley_test_things_total 5",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            text.contains("volley_test_latency_seconds_sum{app=\"shop\"} 14.04"),
            "{text}"
        );
        assert!(
            text.contains("# HELP volley_test_things_total Things.\n"),
            "{text}"
        );
    }

    #[test]
    fn an_observation_on_a_bound_lands_in_that_bucket() {
        let h = AtomicHistogram::sizes();
        h.observe_units(1);
        h.observe_units(2);
        h.observe_units(3);
        h.observe_units(100_000);
        let counts: Vec<u64> = h.inner.counts.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(&counts[..3], &[1, 1, 1]);
        assert_eq!(*counts.last().unwrap(), 1);
        assert_eq!(h.count(), 4);
    }
}
