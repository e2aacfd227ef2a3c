//! Volley's front: the HTTP API that takes notifications in and hands jobs to the controller.
//!
//! A request goes through, in order:
//! 1. the drain gate (a draining front answers 503 with `Retry-After`),
//! 2. authentication (`auth`: `Authorization: Bearer <key>`, one key per app),
//! 3. the body limit (`front.max_body_bytes`, 413),
//! 4. parsing straight from the body bytes, tokens into one [`TokenList`] buffer, validated as
//!    they are read (`tokens`); every error names its JSON path,
//! 5. rendering once per provider (`render`): one APNs payload and one FCM body around the
//!    token, shared by every token of the job,
//! 6. `Controller::submit` over tarpc; the answer (202 with the job id) comes only once the
//!    controller has the job queued.
//!
//! The native API lives in [`native`], the gorush- and gaurun-compatible endpoints in
//! [`compat`], and the unauthenticated operations endpoints (`/healthz`, `/metrics`...) in
//! [`ops`]. The controller connection is dialled again when it is lost (`link`).
//! `docs/api.md` describes the API for its users; [`openapi`] generates its OpenAPI 3.1
//! document from the handlers' annotations and types (served at `/openapi.json`, kept in
//! `docs/openapi.json`), and every route is registered through it, so none goes undocumented.
//!
//! [`TokenList`]: volley_contracts::TokenList

#![forbid(unsafe_code)]

mod auth;
mod batch;
pub mod compat;
mod dashboard;
mod error;
mod limit;
mod link;
mod metrics;
pub mod native;
pub mod openapi;
pub mod ops;
mod ops_port;
mod render;
mod serve;
mod tokens;
mod webpush;
mod whole;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::BytesMut;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use volley_config::Config;
use volley_contracts::{ControllerClient, JobAccepted, Links, SubmitJob};

pub use error::{ApiError, Code};

/// Why the front could not run.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// The configuration cannot be served (e.g. one API key given to two apps).
    #[error("invalid front configuration: {0}")]
    Config(String),
    /// The HTTP server failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// How long the controller may take to queue a job (a million tokens is ~70 MB to transfer).
const SUBMIT_DEADLINE: Duration = Duration::from_secs(60);
/// How long the controller may take over status, cancel and stats.
const QUERY_DEADLINE: Duration = Duration::from_secs(5);
/// Bodies above this are parsed on the blocking pool so that parsing a million tokens does not
/// stall the other requests of a runtime worker.
const INLINE_PARSE_BYTES: usize = 256 * 1024;

/// Most bytes reserved for a body before it arrives: a million-token request (67 MB) and
/// more fit without growing the buffer (growing copies it, and holds both copies for a
/// moment). Reserved is not resident: a client that declares more than it sends costs
/// address space, not memory.
const PREALLOCATE_BODY_BYTES: usize = 128 * 1024 * 1024;

/// One app as the front sees it.
#[derive(Debug)]
pub(crate) struct AppEntry {
    pub name: String,
    /// `apps.apns.topic`, when the app has APNs credentials.
    pub apns_topic: Option<String>,
    /// Whether the app has FCM credentials.
    pub fcm: bool,
    /// The app has an `[apps.webpush]` section.
    pub webpush: bool,
}

pub(crate) struct Inner {
    pub config: Config,
    pub apps: Vec<AppEntry>,
    keys: auth::KeyRing,
    limiter: limit::Limiter,
    controller: Arc<link::ControllerLink>,
    batcher: batch::Batcher,
    pub metrics: Arc<metrics::Metrics>,
    /// The front's `/metrics`, `/healthz` and `/readyz` (its ops port's, and the API
    /// listener's `/metrics`).
    pub(crate) ops: volley_ops::Ops,
    draining: AtomicBool,
    pub started: Instant,
    pub default_app: Option<usize>,
}

/// The front's shared state: configuration, keys, controller client and counters.
#[derive(Clone)]
pub struct FrontState {
    pub(crate) inner: Arc<Inner>,
}

impl FrontState {
    /// Builds the state for `config`, talking to the controller through `controller` (and
    /// dialling `front.controller` again if that connection is lost).
    pub fn new(
        config: Config,
        controller: ControllerClient,
        links: Links,
    ) -> Result<FrontState, FrontError> {
        if u32::try_from(config.front.max_body_bytes).is_err() {
            // Token lists index their buffer with u32 offsets.
            return Err(FrontError::Config(
                "front.max_body_bytes must be below 4 GiB".into(),
            ));
        }
        let keys = auth::KeyRing::new(&config).map_err(FrontError::Config)?;
        let limiter = limit::Limiter::new(&config);
        let apps: Vec<AppEntry> = config
            .apps
            .iter()
            .map(|app| AppEntry {
                name: app.name.clone(),
                apns_topic: app.apns.as_ref().map(|a| a.topic.clone()),
                fcm: app.fcm.is_some(),
                webpush: app.webpush.is_some(),
            })
            .collect();
        let default_app = match &config.front.default_app {
            None => None,
            Some(name) => Some(apps.iter().position(|a| &a.name == name).ok_or_else(|| {
                FrontError::Config(format!("front.default_app: no app named {name:?}"))
            })?),
        };
        let metrics = Arc::new(metrics::Metrics::new(
            apps.iter().map(|a| a.name.clone()).collect(),
        ));
        let controller = link::ControllerLink::new(
            controller,
            volley_contracts::controller_addresses(&config.front.controller),
            // Where a reconnection starts looking; the caller dialled the first that answered.
            0,
            links,
        );
        let batcher = batch::Batcher::new(controller.clone(), SUBMIT_DEADLINE);
        Ok(FrontState {
            inner: Arc::new_cyclic(|weak| Inner {
                ops: ops_port::ops(weak.clone(), metrics.clone()),
                config,
                apps,
                keys,
                limiter,
                controller,
                batcher,
                metrics,
                draining: AtomicBool::new(false),
                started: Instant::now(),
                default_app,
            }),
        })
    }

    /// Marks the front as draining: not ready, and new requests get 503.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the front is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// The index of the app whose key the request carries, once the key's rate limit
    /// (`front.key_requests_per_second`, `apps.requests_per_second`) lets the request in.
    pub(crate) fn authenticate(&self, headers: &http::HeaderMap) -> Result<usize, ApiError> {
        let (app, slot) = self.inner.keys.identify(headers)?;
        if let Err(wait) = self.inner.limiter.check(slot) {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u32;
            return Err(ApiError::new(
                Code::RateLimited,
                "this api key sent more requests than its rate limit allows",
            )
            .retry_after(seconds));
        }
        Ok(app)
    }

    /// Reads the body up to `front.max_body_bytes`, into a buffer its parse may rewrite
    /// (`tokens::settle`).
    pub(crate) async fn read_body(&self, body: Body) -> Result<BytesMut, ApiError> {
        let limit = self.inner.config.front.max_body_bytes;
        let too_large = || {
            ApiError::new(
                Code::BodyTooLarge,
                format!("request body is above the {limit}-byte limit (front.max_body_bytes)"),
            )
        };
        // A declared Content-Length above the limit is refused before reading anything.
        let declared = axum::body::HttpBody::size_hint(&body).lower();
        if declared > limit as u64 {
            return Err(too_large());
        }
        // One buffer, sized from Content-Length up to a cap (a client may declare more than it
        // sends). Past the cap it grows once, to the declared length, rather than doubling: a
        // 67 MB body grown by doubling would be copied from a 64 MiB buffer into a 128 MiB one,
        // and both would be held at once.
        let declared = declared as usize;
        let mut buffer = BytesMut::with_capacity(declared.min(PREALLOCATE_BODY_BYTES));
        let mut body = Limited::new(body, limit);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        if buffer.capacity() - buffer.len() < data.len() {
                            buffer.reserve(declared.saturating_sub(buffer.len()).max(data.len()));
                        }
                        buffer.extend_from_slice(data);
                    }
                }
                Err(error) if error.is::<LengthLimitError>() => return Err(too_large()),
                Err(_) => {
                    return Err(ApiError::new(
                        Code::BadRequest,
                        "the request body could not be read",
                    ))
                }
            }
        }
        Ok(buffer)
    }

    /// Hands a job to the controller; returns once it is queued. Small jobs share a call
    /// with the others submitted at the same moment (`batch`).
    pub(crate) async fn submit(&self, job: SubmitJob) -> Result<JobAccepted, ApiError> {
        // Both boxed: a tarpc call's future is several kilobytes and the batcher's queue send
        // nearly two, and inline they would make every request's handler future that large
        // (axum boxes it and the runtime moves it per request).
        if job.len() < batch::BATCH_BELOW {
            return Box::pin(self.inner.batcher.submit(job)).await;
        }
        Box::pin(self.submit_alone(job)).await
    }

    /// A large job in a call of its own; sent again to a new leader when that is safe (as
    /// the batcher does: refused by a standby, or with an idempotency key after a lost link).
    async fn submit_alone(&self, job: SubmitJob) -> Result<JobAccepted, ApiError> {
        let link = &self.inner.controller;
        let give_up = tokio::time::Instant::now() + link::FAILOVER_WAIT;
        let mut job = job;
        loop {
            // Its token buffers are shared, not copied.
            let kept = link.follows_leader().then(|| job.clone());
            let client = link.client();
            let mut context = tarpc::context::current();
            context.deadline = Instant::now() + SUBMIT_DEADLINE;
            let error = match client.submit(context, job).await {
                Ok(Ok(accepted)) => return Ok(accepted),
                Ok(Err(wire)) => {
                    link.answered(&wire);
                    let again = wire.code == volley_contracts::ErrorCode::NotLeader;
                    (ApiError::from_wire(wire), again)
                }
                Err(rpc) => {
                    tracing::warn!(error = %rpc, "controller submit failed");
                    let again = kept
                        .as_ref()
                        .is_some_and(|job| job.idempotency_key.is_some());
                    (self.rpc_failed(&rpc), again)
                }
            };
            let (error, again) = error;
            let Some(next) = kept.filter(|_| again) else {
                return Err(error);
            };
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if link.switched(&client, left).await.is_none() {
                return Err(error);
            }
            job = next;
        }
    }

    /// When this front's link certificate expires, seconds since the epoch.
    pub(crate) fn certificate_not_after(&self) -> Option<i64> {
        self.inner.controller.certificate_not_after()
    }

    /// Reloads of this front's certificate files that failed.
    pub(crate) fn certificate_reload_failures(&self) -> u64 {
        self.inner.controller.certificate_reload_failures()
    }

    /// The controller client to call now.
    pub(crate) fn controller(&self) -> Arc<ControllerClient> {
        self.inner.controller.client()
    }

    /// The answer to a failed controller call; reconnects when the connection is gone.
    pub(crate) fn rpc_failed(&self, error: &tarpc::client::RpcError) -> ApiError {
        self.inner.controller.unreachable(error)
    }

    /// The answer to a controller's refusal; a standby's moves the link to the leader.
    pub(crate) fn wire_failed(&self, error: volley_contracts::WireError) -> ApiError {
        self.inner.controller.answered(&error);
        ApiError::from_wire(error)
    }

    /// A tarpc context for a quick query.
    pub(crate) fn query_context() -> tarpc::context::Context {
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + QUERY_DEADLINE;
        context
    }
}

/// Parses a JSON body, naming the path of the first problem.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            Code::BadRequest,
            "the body is empty: send a json object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T =
        serde_path_to_error::deserialize(&mut deserializer).map_err(ApiError::from_json)?;
    deserializer.end().map_err(|_| {
        ApiError::new(
            Code::BadRequest,
            "malformed json: trailing characters after the value",
        )
    })?;
    Ok(value)
}

/// Runs CPU-heavy request work (parsing, validation, rendering) inline for small bodies and on
/// the blocking pool for large ones.
pub(crate) async fn cpu<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if size <= INLINE_PARSE_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::new(Code::Internal, "request processing failed"))
}

/// The front's routes on `state`, with the drain gate and request metrics.
pub fn router(state: FrontState) -> Router {
    // Every route comes with its part of the OpenAPI document (`openapi::routes`).
    let (routes, _) = openapi::routes().split_for_parts();
    routes
        // The dashboard is for operators, not API clients: not in the OpenAPI document, and
        // its data only with `front.operator_key` here (`dashboard`).
        .merge(dashboard::router(dashboard::Access::OperatorKey))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Refuses new work while draining and counts every answer by route and status.
async fn gate(State(state): State<FrontState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = metrics::Route::of(
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
        request.method(),
    );
    let probe = matches!(
        route,
        metrics::Route::Healthz | metrics::Route::Readyz | metrics::Route::Metrics
    );
    let response = if state.is_draining() && !probe {
        ApiError::draining().into_response()
    } else {
        next.run(request).await
    };
    let status = response.status().as_u16();
    state
        .inner
        .metrics
        .request(route, status, started.elapsed());
    if let Some(code) = response.extensions().get::<Code>() {
        state.inner.metrics.rejected(*code);
        tracing::debug!(
            route = route.as_str(),
            status,
            code = code.as_str(),
            "request refused"
        );
    }
    response
}

/// Serves the front on `listener` until `shutdown` resolves, then drains.
///
/// Connections are timed out and capped as `[front]` says (`serve`). Draining: readiness
/// turns false and requests that start afterwards get 503 with `Retry-After: 5`; the listener
/// closes; idle connections close and busy ones close once answered; requests in flight get
/// up to `front.shutdown_grace` to finish before the remaining connections are dropped.
///
/// Its ops port (`/metrics`, `/healthz`, `/readyz` and the dashboard) is served on `ops`
/// until the front stops.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    ops: tokio::net::TcpListener,
    controller: ControllerClient,
    links: Links,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FrontError> {
    let grace = config.front.shutdown_grace;
    let state = FrontState::new(config, controller, links)?;
    let app = router(state.clone());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, apps = state.inner.apps.len(), "front listening");
    }
    // After the line above: tools read the front's address from its first `addr`.
    let ops_stop = tokio_util::sync::CancellationToken::new();
    let ops_served = tokio::spawn(volley_ops::serve(
        ops,
        "front",
        ops_port::router(state.clone()),
        ops_stop.clone().cancelled_owned(),
    ));
    let drain_started = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let state = state.clone();
        let drain_started = drain_started.clone();
        async move {
            shutdown.await;
            tracing::info!(grace_ms = grace.as_millis() as u64, "front draining");
            state.start_draining();
            drain_started.notify_one();
        }
    };
    let server = serve::serve(listener, app, state.clone(), signal);
    let deadline = async {
        drain_started.notified().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = server => {}
        () = deadline => {
            tracing::warn!("shutdown grace period over; dropping the remaining connections");
        }
    }
    ops_stop.cancel();
    let _ = ops_served.await;
    tracing::info!("front stopped");
    Ok(())
}
