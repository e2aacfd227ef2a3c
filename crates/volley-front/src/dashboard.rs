//! The live dashboard: a page for operators (`/dashboard`) and the JSON it polls
//! (`/dashboard/state`), both served by the front (`docs/dashboard.md`).
//!
//! The page is plain HTML, CSS and JavaScript with one vendored chart library (uPlot, MIT,
//! `assets/vendor/uplot`), all embedded in the binary: nothing to build, nothing fetched from
//! elsewhere, and a Content-Security-Policy that lets it load only from the front itself.
//!
//! Where it is served:
//! - on the front's ops port (`front.ops_listen`), like `/metrics`: without a key;
//! - on the API listener, only with `front.operator_key`: the page (static, no data) is served
//!   to anyone, but `/dashboard/state` wants `Authorization: Bearer <operator key>`, which the
//!   page takes from its URL's fragment (`/dashboard#key=…`: a fragment never leaves the
//!   browser). Without an operator key the state answers 404 and says where to look instead.
//!
//! The state is one controller call (`dashboard`), reshaped for the page: delivery rates
//! computed from the controller's cumulative samples, and nothing a job status holds that
//! names a device (its invalid tokens are left out).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ring::digest::{digest, SHA256};
use serde::Serialize;
use volley_contracts::{DashboardView, JobStatus, RateSample};

use crate::error::{ApiError, Code};
use crate::ops::{AgentView, ControllerView, QueueView};
use crate::FrontState;

/// How many jobs the page lists: the unfinished ones first, then the recently finished.
const JOBS: u32 = 100;

/// The page loads only what the front serves; its data comes from `/dashboard/state` on the
/// same origin. uPlot sizes its elements through the CSSOM, which `style-src 'self'` allows.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../assets/dashboard/app.css");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/vendor/uplot/LICENSE");

/// Who may read `/dashboard/state` on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The ops port: anyone who can reach it.
    Open,
    /// The API listener: callers with `front.operator_key`.
    OperatorKey,
}

/// The dashboard's routes for a listener with `access`.
pub(crate) fn router(access: Access) -> Router<FrontState> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { asset(INDEX_HTML, "text/html") }),
        )
        .route(
            "/dashboard/",
            get(|| async { asset(INDEX_HTML, "text/html") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route(
            "/dashboard/uplot.min.js",
            get(|| async { asset(UPLOT_JS, "text/javascript") }),
        )
        .route(
            "/dashboard/uplot.min.css",
            get(|| async { asset(UPLOT_CSS, "text/css") }),
        )
        .route(
            "/dashboard/uplot/LICENSE",
            get(|| async { asset(UPLOT_LICENSE, "text/plain") }),
        )
        .route(
            "/dashboard/state",
            get(move |State(state): State<FrontState>, headers: HeaderMap| {
                dashboard_state(state, headers, access)
            }),
        )
}

/// An embedded file, with the headers every dashboard answer carries.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("{content_type}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("text/plain")),
    );
    // Revalidated at each load: a new front version brings a new page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// Headers that keep the page to itself: only its own origin's resources, no framing, no
/// sniffing, no referrer.
fn secure(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `GET /dashboard/state`: what the page shows, fresh from the controller.
async fn dashboard_state(state: FrontState, headers: HeaderMap, access: Access) -> Response {
    let answer = async {
        if access == Access::OperatorKey {
            operator(&state, &headers)?;
        }
        let view = state
            .controller()
            .dashboard(FrontState::query_context(), JOBS)
            .await
            .map_err(|rpc| state.rpc_failed(&rpc))?
            .map_err(|wire| state.wire_failed(wire))?;
        Ok::<_, ApiError>(DashboardState::from(view))
    };
    let mut response = match answer.await {
        Ok(view) => Json(view).into_response(),
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(headers);
    response
}

/// Checks the request's `Authorization: Bearer` against `front.operator_key`.
fn operator(state: &FrontState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.inner.config.front.operator_key.as_ref() else {
        return Err(ApiError::new(
            Code::NotFound,
            "the dashboard's data is served on the front's ops port (front.ops_listen); \
             set front.operator_key to open it on this listener",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, key) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .ok_or_else(|| {
            ApiError::new(
                Code::Unauthorized,
                "missing operator key: send `Authorization: Bearer <front.operator_key>`, \
                 or open /dashboard#key=<front.operator_key>",
            )
        })?;
    if same_key(given, expected.expose()) {
        Ok(())
    } else {
        Err(ApiError::new(Code::Unauthorized, "wrong operator key"))
    }
}

/// Compares two keys in time that does not depend on where they differ: their SHA-256
/// digests, every byte of them (as `auth` does for API keys, the caller cannot steer a
/// digest towards the key's byte by byte).
fn same_key(given: &str, expected: &str) -> bool {
    let given = digest(&SHA256, given.as_bytes());
    let expected = digest(&SHA256, expected.as_bytes());
    given
        .as_ref()
        .iter()
        .zip(expected.as_ref())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

/// `/dashboard/state`: the controller's view, shaped for the page.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardState {
    /// The controller's clock, ms since the epoch.
    now_ms: u64,
    controller: ControllerView,
    totals: Totals,
    /// Unfinished jobs newest first, then recently finished ones.
    jobs: Vec<JobView>,
    /// Outcomes per second between consecutive samples, oldest first.
    rate: Vec<RatePoint>,
    outcomes: Vec<OutcomeView>,
    agents: Vec<AgentView>,
    queues: Vec<QueueView>,
}

#[derive(Debug, Serialize)]
struct Totals {
    pending_notifications: u64,
    max_pending_notifications: u64,
    active_jobs: u64,
    agents: usize,
    queued_chunks: u64,
    chunks_redispatched: u64,
}

#[derive(Debug, Serialize)]
struct JobView {
    id: String,
    app: String,
    state: &'static str,
    accepted: u64,
    delivered: u64,
    invalid: u64,
    failed: u64,
    cancelled: u64,
    pending: u64,
    /// Share of the accepted notifications that have an outcome, 0 to 1.
    progress: f64,
    created_ms: u64,
    finished_ms: Option<u64>,
    waiting: Option<String>,
    failures: Vec<FailureView>,
}

#[derive(Debug, Serialize)]
struct FailureView {
    platform: &'static str,
    class: String,
    reason: String,
    count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
struct RatePoint {
    /// The end of the interval, ms since the epoch.
    at_ms: u64,
    delivered_per_second: f64,
    invalid_per_second: f64,
    failed_per_second: f64,
}

#[derive(Debug, Serialize)]
struct OutcomeView {
    app: String,
    platform: &'static str,
    outcome: String,
    class: String,
    reason: String,
    count: u64,
}

impl From<DashboardView> for DashboardState {
    fn from(view: DashboardView) -> Self {
        let stats = view.stats;
        DashboardState {
            now_ms: view.now_ms,
            controller: ControllerView::from(&stats.controller),
            totals: Totals {
                pending_notifications: stats.pending_notifications,
                max_pending_notifications: stats.max_pending_notifications,
                active_jobs: stats.active_jobs,
                agents: stats.agents.len(),
                queued_chunks: stats.queue_usage,
                chunks_redispatched: stats.chunks_redispatched,
            },
            jobs: view.jobs.into_iter().map(JobView::from).collect(),
            rate: rates(&view.history),
            outcomes: stats
                .outcomes
                .into_iter()
                .map(|o| OutcomeView {
                    app: o.app,
                    platform: o.platform.as_str(),
                    outcome: o.outcome,
                    class: o.class,
                    reason: o.reason,
                    count: o.count,
                })
                .collect(),
            agents: stats.agents.iter().map(AgentView::from).collect(),
            queues: stats.queues.iter().map(QueueView::from).collect(),
        }
    }
}

impl From<JobStatus> for JobView {
    /// Everything but the invalid tokens: they name devices.
    fn from(job: JobStatus) -> Self {
        let done = job.accepted.saturating_sub(job.pending);
        let progress = if job.accepted == 0 {
            1.0
        } else {
            done as f64 / job.accepted as f64
        };
        JobView {
            id: job.id.to_string(),
            app: job.app,
            state: job.state.as_str(),
            accepted: job.accepted,
            delivered: job.delivered,
            invalid: job.invalid,
            failed: job.failed,
            cancelled: job.cancelled,
            pending: job.pending,
            progress,
            created_ms: job.created_ms,
            finished_ms: job.finished_ms,
            waiting: job.waiting,
            failures: job
                .failures
                .into_iter()
                .map(|f| FailureView {
                    platform: f.platform.as_str(),
                    class: f.class,
                    reason: f.reason,
                    count: f.count,
                })
                .collect(),
        }
    }
}

/// Outcomes per second between consecutive cumulative samples. Samples that do not move
/// forward in time are skipped; a total that went down (another controller took over with
/// its own counts) reads as zero for that interval rather than as a negative rate.
fn rates(history: &[RateSample]) -> Vec<RatePoint> {
    let mut points = Vec::with_capacity(history.len().saturating_sub(1));
    let mut samples = history.iter();
    let Some(mut previous) = samples.next() else {
        return points;
    };
    for sample in samples {
        if sample.at_ms <= previous.at_ms {
            continue;
        }
        let seconds = (sample.at_ms - previous.at_ms) as f64 / 1000.0;
        let per_second = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
        points.push(RatePoint {
            at_ms: sample.at_ms,
            delivered_per_second: per_second(sample.delivered, previous.delivered),
            invalid_per_second: per_second(sample.invalid, previous.invalid),
            failed_per_second: per_second(sample.failed, previous.failed),
        });
        previous = sample;
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, delivered: u64, invalid: u64, failed: u64) -> RateSample {
        RateSample {
            at_ms,
            delivered,
            invalid,
            failed,
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_samples() {
        let history = [
            sample(10_000, 0, 0, 0),
            sample(11_000, 500, 2, 1),
            // Two seconds later: 1,000 more delivered is 500 a second.
            sample(13_000, 1_500, 2, 5),
        ];
        assert_eq!(
            rates(&history),
            vec![
                RatePoint {
                    at_ms: 11_000,
                    delivered_per_second: 500.0,
                    invalid_per_second: 2.0,
                    failed_per_second: 1.0,
                },
                RatePoint {
                    at_ms: 13_000,
                    delivered_per_second: 500.0,
                    invalid_per_second: 0.0,
                    failed_per_second: 2.0,
                },
            ]
        );
    }

    #[test]
    fn rates_skip_stalled_clocks_and_never_go_negative() {
        assert!(rates(&[]).is_empty());
        assert!(rates(&[sample(1_000, 5, 0, 0)]).is_empty());
        let history = [
            sample(1_000, 100, 0, 0),
            sample(1_000, 150, 0, 0),
            sample(2_000, 40, 0, 0),
        ];
        let points = rates(&history);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].delivered_per_second, 0.0);
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(
            "operator-key-0123456789",
            "operator-key-0123456789"
        ));
        assert!(!same_key(
            "operator-key-0123456780",
            "operator-key-0123456789"
        ));
        assert!(!same_key("operator-key", "operator-key-0123456789"));
        assert!(!same_key("", "operator-key-0123456789"));
    }
}
