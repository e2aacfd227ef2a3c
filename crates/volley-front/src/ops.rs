//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`, `/stat/app`, `/stat/runtime`,
//! `/config/app`, and the monitoring endpoints of gorush (`/api/stat/app`, `/api/stat/go`,
//! `/sys/stats`, `/api/config`) and gaurun (`/stat/app`, `/stat/go`) in their shapes.
//!
//! They take no API key: they show no token, no payload and no secret (API keys print as
//! `<redacted>`), but they do show app names and cluster shape, so firewall them from the
//! public side (see `docs/api.md`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use volley_contracts::{ClusterStats, Platform};

use crate::error::ApiError;
use crate::FrontState;

/// How long `/readyz` waits for the controller.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn controller_stats(state: &FrontState) -> Result<ClusterStats, ApiError> {
    let mut context = FrontState::query_context();
    context.deadline = std::time::Instant::now() + READY_TIMEOUT;
    state
        .controller()
        .stats(context)
        .await
        .map_err(|rpc| state.rpc_failed(&rpc))?
        .map_err(|wire| state.wire_failed(wire))
}

/// `GET /healthz`: 200 whenever the process serves HTTP (a liveness probe).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process serves HTTP", body = Probe,
        example = json!({"status": "ok"})))
)]
pub async fn healthz() -> Json<Probe> {
    Json(Probe { status: "ok" })
}

/// `GET /readyz`: 200 when the controller answers within 2 s and the front is not draining
/// (a readiness probe).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Ready to take work", body = Probe,
        example = json!({"status": "ready"})))
)]
pub async fn readyz(State(state): State<FrontState>) -> Result<Json<Probe>, ApiError> {
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    controller_stats(&state).await?;
    Ok(Json(Probe { status: "ready" }))
}

/// `GET /healthz` and `GET /readyz`: what a probe reads.
#[derive(Serialize, ToSchema)]
pub struct Probe {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    status: &'static str,
}

/// Notifications delivered and failed on one platform.
#[derive(Serialize, Default, ToSchema)]
pub struct PushCounts {
    /// Delivered.
    push_success: u64,
    /// Failed or invalid.
    push_error: u64,
}

/// One of the controller's scheduler queues (an app's chunks for one platform).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    app: String,
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    /// Chunks waiting to be handed out.
    chunks: u64,
    /// Notifications in those chunks.
    notifications: u64,
    /// Calls out with agents that carry its chunks.
    in_flight: u64,
    /// No registered agent declared this app and platform.
    waiting_for_agent: bool,
    /// Agents that serve it but paused it (their circuit for it is open).
    paused_agents: u32,
    /// Why its chunks are not moving, while they are not.
    waiting: Option<String>,
}

/// Submissions refused, by `error.code` (the front's) and by reason (the controller's).
#[derive(Serialize, ToSchema)]
pub struct Rejections {
    /// This front's refusals by `error.code`, non-zero ones only.
    #[schema(value_type = BTreeMap<String, u64>)]
    front: BTreeMap<&'static str, u64>,
    /// The controller's refusals: `overloaded`, `draining`, `too_large`, `empty`, `store`,
    /// `no_credentials`.
    controller: BTreeMap<String, u64>,
}

/// Invalid-token webhook deliveries of one app.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    app: String,
    pending_batches: u64,
    delivered_batches: u64,
    failed_attempts: u64,
}

/// A registered agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentView {
    /// Its registration id.
    id: u64,
    name: String,
    addr: String,
    /// Chunks out with it.
    in_flight: u32,
    /// Chunks it has completed.
    chunks_done: u64,
    /// When its link certificate expires, in Unix seconds (`null` on insecure links).
    certificate_expires_at: Option<i64>,
    /// Where its ops port (`/metrics`, `/healthz`, `/readyz`) listens.
    ops_addr: String,
    /// The app and platform queues it paused: its circuit breaker for them is open.
    paused: Vec<PausedView>,
}

/// An app and platform an agent paused (its circuit breaker for them is open).
#[derive(Debug, Serialize, ToSchema)]
pub struct PausedView {
    app: String,
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    /// How much longer its chunks stay off the agent, in milliseconds.
    for_ms: u64,
}

/// Delivery counters of one app and platform.
#[derive(Serialize, ToSchema)]
pub struct AppView {
    app: String,
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    push_success: u64,
    /// Failed and invalid notifications.
    push_error: u64,
}

/// gaurun's and gorush's statistics in one answer (each client reads its own keys), plus
/// Volley's queues, agents and rejections.
#[derive(Serialize, ToSchema)]
pub struct StatApp {
    /// gorush: the server's version.
    version: &'static str,
    /// gorush: chunks out with agents.
    busy_workers: u64,
    /// gorush: notifications delivered.
    success_tasks: u64,
    /// gorush: notifications failed or invalid.
    failure_tasks: u64,
    /// gorush: delivered, failed and pending notifications.
    submitted_tasks: u64,
    /// gorush: always zero (no Huawei provider).
    huawei: PushCounts,
    /// gaurun: `controller.max_pending_notifications`.
    queue_max: u64,
    /// gaurun: agents × `agent.window`.
    pusher_max: u64,
    /// gaurun: chunks out with agents.
    pusher_count: u64,
    /// Chunks waiting in the controller's scheduler.
    queue_usage: u64,
    /// The scheduler's queues with chunks queued or out.
    queues: Vec<QueueView>,
    /// `controller.max_pending_notifications`.
    max_pending_notifications: u64,
    rejections: Rejections,
    webhooks: Vec<WebhookView>,
    /// Delivered, failed and invalid notifications.
    total_count: u64,
    ios: PushCounts,
    android: PushCounts,
    /// Web Push (not in gorush or gaurun).
    webpush: PushCounts,
    /// Notifications accepted and not final yet.
    pending_notifications: u64,
    /// Jobs not final yet.
    active_jobs: u64,
    /// Chunks handed to another agent after theirs failed.
    chunks_redispatched: u64,
    /// Registered agents.
    workers: u64,
    agents: Vec<AgentView>,
    /// When the controller's link certificate expires, in Unix seconds (`null` on insecure
    /// links).
    controller_certificate_expires_at: Option<i64>,
    /// The controller that answered: with the PostgreSQL store, the leader.
    controller: ControllerView,
    apps: Vec<AppView>,
}

/// The controller that answered `/stat/app`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ControllerView {
    /// Where it keeps its state: `redb` (embedded) or `postgres`.
    store: String,
    /// Its address, as standbys name it to fronts and agents.
    address: String,
    /// Its leadership's term (`postgres` store; `null` with `redb`): it grows by one at each
    /// takeover.
    term: Option<i64>,
}

impl From<&volley_contracts::ControllerStat> for ControllerView {
    fn from(controller: &volley_contracts::ControllerStat) -> Self {
        ControllerView {
            store: controller.store.clone(),
            address: controller.address.clone(),
            term: controller.term,
        }
    }
}

impl From<&volley_contracts::AgentStat> for AgentView {
    fn from(a: &volley_contracts::AgentStat) -> Self {
        AgentView {
            id: a.id.0,
            name: a.name.clone(),
            addr: a.addr.clone(),
            in_flight: a.in_flight,
            chunks_done: a.chunks_done,
            certificate_expires_at: a.certificate_expires_at,
            ops_addr: a.ops_addr.clone(),
            paused: a
                .paused
                .iter()
                .map(|p| PausedView {
                    app: p.app.clone(),
                    platform: p.platform.as_str(),
                    for_ms: p.for_ms,
                })
                .collect(),
        }
    }
}

impl From<&volley_contracts::QueueStat> for QueueView {
    fn from(q: &volley_contracts::QueueStat) -> Self {
        QueueView {
            app: q.app.clone(),
            platform: q.platform.as_str(),
            chunks: q.chunks,
            notifications: q.notifications,
            in_flight: q.in_flight,
            waiting_for_agent: q.waiting_for_agent,
            paused_agents: q.paused_agents,
            waiting: q.waiting.clone(),
        }
    }
}

/// `GET /stat/app` (gaurun): the statistics of gaurun and gorush in one answer, filled from
/// the controller, plus Volley's queues, agents and rejections.
#[utoipa::path(
    get,
    path = "/stat/app",
    operation_id = "stat_app",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The cluster's statistics", body = StatApp))
)]
pub async fn stat_app(State(state): State<FrontState>) -> Result<Json<StatApp>, ApiError> {
    let stats = controller_stats(&state).await?;
    let mut ios = PushCounts::default();
    let mut android = PushCounts::default();
    let mut webpush = PushCounts::default();
    for counters in &stats.apps {
        let side = match counters.platform {
            Platform::Apns => &mut ios,
            Platform::Fcm => &mut android,
            Platform::WebPush => &mut webpush,
        };
        side.push_success += counters.success;
        side.push_error += counters.error;
    }
    let in_flight: u64 = stats.agents.iter().map(|a| u64::from(a.in_flight)).sum();
    let window = u64::from(state.inner.config.agent.window);
    let success = ios.push_success + android.push_success + webpush.push_success;
    let error = ios.push_error + android.push_error + webpush.push_error;
    Ok(Json(StatApp {
        version: env!("CARGO_PKG_VERSION"),
        busy_workers: in_flight,
        success_tasks: success,
        failure_tasks: error,
        submitted_tasks: success + error + stats.pending_notifications,
        huawei: PushCounts::default(),
        queue_max: stats.max_pending_notifications,
        pusher_max: window * stats.agents.len() as u64,
        pusher_count: in_flight,
        queue_usage: stats.queue_usage,
        queues: stats.queues.iter().map(QueueView::from).collect(),
        max_pending_notifications: stats.max_pending_notifications,
        rejections: Rejections {
            front: state.inner.metrics.rejections().into_iter().collect(),
            controller: stats
                .rejections
                .iter()
                .map(|r| (r.reason.clone(), r.count))
                .collect(),
        },
        webhooks: stats
            .webhooks
            .iter()
            .map(|w| WebhookView {
                app: w.app.clone(),
                pending_batches: w.pending_batches,
                delivered_batches: w.delivered_batches,
                failed_attempts: w.failed_attempts,
            })
            .collect(),
        total_count: success + error,
        ios,
        android,
        webpush,
        pending_notifications: stats.pending_notifications,
        active_jobs: stats.active_jobs,
        chunks_redispatched: stats.chunks_redispatched,
        workers: stats.agents.len() as u64,
        controller_certificate_expires_at: stats.certificate_expires_at,
        controller: ControllerView::from(&stats.controller),
        agents: stats.agents.iter().map(AgentView::from).collect(),
        apps: stats
            .apps
            .iter()
            .map(|c| AppView {
                app: c.app.clone(),
                platform: c.platform.as_str(),
                push_success: c.success,
                push_error: c.error,
            })
            .collect(),
    }))
}

/// `GET /api/stat/app` (gorush): the same answer as `/stat/app`.
#[utoipa::path(
    get,
    path = "/api/stat/app",
    operation_id = "gorush_stat_app",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The cluster's statistics", body = StatApp))
)]
pub async fn gorush_stat_app(state: State<FrontState>) -> Result<Json<StatApp>, ApiError> {
    stat_app(state).await
}

/// A field of `/proc/self/status` given in kB, in bytes (Linux only).
fn proc_status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory of this process.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    proc_status_bytes(&status, "VmRSS:")
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The Go runtime statistics gaurun and gorush serve (golang-stats-api-handler's shape),
/// filled from this process: see [`stat_go`].
#[derive(Serialize, ToSchema)]
pub struct StatGo {
    /// Now, in ns since the epoch.
    time: u64,
    /// `volley <version> (rust)`.
    go_version: &'static str,
    go_os: &'static str,
    go_arch: &'static str,
    cpu_num: u64,
    /// Tokio's live tasks.
    goroutine_num: u64,
    /// Tokio's workers.
    gomaxprocs: u64,
    cgo_call_num: u64,
    /// Resident memory, bytes.
    memory_alloc: u64,
    memory_total_alloc: u64,
    memory_sys: u64,
    memory_lookups: u64,
    memory_mallocs: u64,
    memory_frees: u64,
    /// The main stack, bytes.
    memory_stack: u64,
    heap_alloc: u64,
    /// The data segment, bytes.
    heap_sys: u64,
    heap_idle: u64,
    heap_inuse: u64,
    heap_released: u64,
    heap_objects: u64,
    gc_next: u64,
    gc_last: u64,
    gc_num: u64,
    gc_per_second: f64,
    gc_pause_per_second: f64,
    /// Always empty: no garbage collector.
    gc_pause: Vec<f64>,
}

/// `GET /stat/go` (gaurun) and `GET /api/stat/go` (gorush): the runtime in the shape of the
/// Go handler both serve there (golang-stats-api-handler). A Rust process has no goroutines
/// or garbage collector: `goroutine_num` is Tokio's live tasks, `gomaxprocs` its workers,
/// memory comes from `/proc/self/status` (`memory_sys` and `memory_alloc` resident memory,
/// `heap_sys` the data segment, `memory_stack` the main stack), and the GC fields are zero.
#[utoipa::path(
    get,
    path = "/stat/go",
    operation_id = "stat_go",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This process's runtime", body = StatGo))
)]
pub async fn stat_go() -> Json<StatGo> {
    let metrics = tokio::runtime::Handle::current().metrics();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| proc_status_bytes(&status, name).unwrap_or(0);
    let rss = field("VmRSS:");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    Json(StatGo {
        time: unix_nanos() as u64,
        go_version: concat!("volley ", env!("CARGO_PKG_VERSION"), " (rust)"),
        go_os: std::env::consts::OS,
        go_arch: std::env::consts::ARCH,
        cpu_num: cpus as u64,
        goroutine_num: metrics.num_alive_tasks() as u64,
        gomaxprocs: metrics.num_workers() as u64,
        cgo_call_num: 0,
        memory_alloc: rss,
        memory_total_alloc: rss,
        memory_sys: rss,
        memory_lookups: 0,
        memory_mallocs: 0,
        memory_frees: 0,
        memory_stack: field("VmStk:"),
        heap_alloc: rss,
        heap_sys: field("VmData:"),
        heap_idle: 0,
        heap_inuse: rss,
        heap_released: 0,
        heap_objects: 0,
        gc_next: 0,
        gc_last: 0,
        gc_num: 0,
        gc_per_second: 0.0,
        gc_pause_per_second: 0.0,
        gc_pause: Vec::new(),
    })
}

/// `GET /api/stat/go` (gorush): the same answer as `/stat/go`.
#[utoipa::path(
    get,
    path = "/api/stat/go",
    operation_id = "gorush_stat_go",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This process's runtime", body = StatGo))
)]
pub async fn gorush_stat_go() -> Json<StatGo> {
    stat_go().await
}

/// A duration as Go's `time.Duration` prints it for the common cases (`1.5s`, `250ms`, `12µs`).
fn go_duration(nanos: u64) -> String {
    match nanos {
        0 => "0s".to_owned(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{}ms", n as f64 / 1e6),
        n => format!("{}s", n as f64 / 1e9),
    }
}

/// gorush's HTTP statistics (its `thoas/stats` shape) for this front since it started.
#[derive(Serialize, ToSchema)]
pub struct SysStats {
    pid: u32,
    /// Go's duration text (`3600.2s`).
    uptime: String,
    uptime_sec: f64,
    /// Now, in seconds since the epoch, as text.
    time: String,
    unixtime: u64,
    /// Answers by status (`"200"`, `"202"`, ..., or `"other"`).
    status_code_count: BTreeMap<String, u64>,
    /// The same as `status_code_count`.
    total_status_code_count: BTreeMap<String, u64>,
    count: u64,
    total_count: u64,
    total_response_time: String,
    total_response_time_sec: f64,
    /// Not counted (0).
    total_response_size: u64,
    /// Not counted (0).
    average_response_size: u64,
    average_response_time: String,
    average_response_time_sec: f64,
    /// Always empty.
    #[schema(value_type = Object)]
    total_metrics_counts: BTreeMap<String, u64>,
    /// Always empty.
    #[schema(value_type = Object)]
    average_metrics_timers: BTreeMap<String, f64>,
}

/// `GET /sys/stats`: gorush's HTTP statistics (the shape of its `thoas/stats` middleware),
/// over every request this front answered since it started. `status_code_count` and `count`
/// cover the same span as their `total_` twins.
#[utoipa::path(
    get,
    path = "/sys/stats",
    operation_id = "sys_stats",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This front's HTTP statistics", body = SysStats))
)]
pub async fn sys_stats(State(state): State<FrontState>) -> Json<SysStats> {
    let answered = state.inner.metrics.answered();
    let by_status: BTreeMap<String, u64> = answered
        .by_status
        .iter()
        .map(|(status, n)| {
            let status = status.map_or_else(|| "other".to_owned(), |s| s.to_string());
            (status, *n)
        })
        .collect();
    let uptime = state.inner.started.elapsed();
    let average = answered.nanos.checked_div(answered.count).unwrap_or(0);
    let now = unix_nanos();
    Json(SysStats {
        pid: std::process::id(),
        uptime: go_duration(u64::try_from(uptime.as_nanos()).unwrap_or(u64::MAX)),
        uptime_sec: uptime.as_secs_f64(),
        time: format!("{}", now / 1_000_000_000),
        unixtime: (now / 1_000_000_000) as u64,
        status_code_count: by_status.clone(),
        total_status_code_count: by_status,
        count: answered.count,
        total_count: answered.count,
        total_response_time: go_duration(answered.nanos),
        total_response_time_sec: answered.nanos as f64 / 1e9,
        total_response_size: 0,
        average_response_size: 0,
        average_response_time: go_duration(average),
        average_response_time_sec: average as f64 / 1e9,
        total_metrics_counts: BTreeMap::new(),
        average_metrics_timers: BTreeMap::new(),
    })
}

/// Writes `value` as block YAML (strings quoted JSON-style, which YAML reads as they are).
fn yaml(out: &mut String, value: &Value, indent: usize) {
    let Value::Object(map) = value else {
        return;
    };
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(key);
        out.push(':');
        match value {
            Value::Object(_) => {
                out.push('\n');
                yaml(out, value, indent + 2);
            }
            scalar => {
                out.push(' ');
                out.push_str(&scalar.to_string());
                out.push('\n');
            }
        }
    }
}

/// `GET /api/config`: gorush's configuration shape (YAML, secrets redacted) describing what
/// this front does for gorush clients: the endpoints, and the default app's providers.
/// Volley's own effective configuration is at `/config/app`.
#[utoipa::path(
    get,
    path = "/api/config",
    operation_id = "gorush_config",
    tag = "operations",
    security(()),
    responses((status = 200, description = "gorush's configuration keys, as YAML",
        content_type = "application/yaml", body = Object))
)]
pub async fn gorush_config(State(state): State<FrontState>) -> Response {
    let config = &state.inner.config;
    let app = config
        .front
        .default_app
        .as_deref()
        .and_then(|name| config.apps.iter().find(|a| a.name == name));
    let apns = app.and_then(|a| a.apns.as_ref());
    let redacted = |set: bool| if set { "<redacted>" } else { "" };
    let document = json!({
        "core": {
            "enabled": app.is_some(),
            "address": config.front.listen.ip().to_string(),
            "port": config.front.listen.port().to_string(),
            "max_notification": config.front.max_tokens_per_request,
            "sync": false,
            "mode": "release",
        },
        "api": {
            "push_uri": "/api/push",
            "stat_go_uri": "/api/stat/go",
            "stat_app_uri": "/api/stat/app",
            "config_uri": "/api/config",
            "sys_stat_uri": "/sys/stats",
            "metric_uri": "/metrics",
            "health_uri": "/healthz",
        },
        "android": {
            "enabled": app.is_some_and(|a| a.fcm.is_some()),
            "key_path": redacted(app.is_some_and(|a| a.fcm.is_some())),
            "credential": "",
            "max_retry": config.agent.max_attempts.saturating_sub(1),
        },
        "huawei": {"enabled": false},
        "ios": {
            "enabled": apns.is_some(),
            "key_path": redacted(apns.is_some_and(|a| a.key_file.is_some() || a.cert_file.is_some())),
            "key_base64": "",
            "key_type": if apns.is_some_and(|a| a.cert_file.is_some()) { "pem" } else { "p8" },
            "password": "",
            "production": apns.is_some_and(|a| a.endpoint == "production"),
            "max_retry": config.agent.max_attempts.saturating_sub(1),
            "key_id": redacted(apns.is_some_and(|a| a.key_id.is_some())),
            "team_id": redacted(apns.is_some_and(|a| a.team_id.is_some())),
            "topic": apns.map_or("", |a| a.topic.as_str()),
        },
    });
    let mut out = String::with_capacity(1024);
    yaml(&mut out, &document, 0);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
        out,
    )
        .into_response()
}

/// This front's process: version, uptime, Tokio's workers and tasks, memory.
#[derive(Serialize, ToSchema)]
pub struct StatRuntime {
    version: &'static str,
    uptime_seconds: u64,
    tokio_workers: u64,
    tokio_alive_tasks: u64,
    /// Resident memory (`null` where `/proc` is missing).
    rss_bytes: Option<u64>,
    /// Whether the front is shutting down.
    draining: bool,
    /// When this front's link certificate expires, in Unix seconds (`null` on insecure links).
    certificate_expires_at: Option<i64>,
}

/// `GET /stat/runtime`: uptime, version, Tokio's workers and tasks, memory.
#[utoipa::path(
    get,
    path = "/stat/runtime",
    operation_id = "stat_runtime",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This front's process", body = StatRuntime))
)]
pub async fn stat_runtime(State(state): State<FrontState>) -> Json<StatRuntime> {
    let metrics = tokio::runtime::Handle::current().metrics();
    Json(StatRuntime {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.inner.started.elapsed().as_secs(),
        tokio_workers: metrics.num_workers() as u64,
        tokio_alive_tasks: metrics.num_alive_tasks() as u64,
        rss_bytes: rss_bytes(),
        draining: state.is_draining(),
        certificate_expires_at: state.certificate_not_after(),
    })
}

/// `GET /config/app`: the effective configuration, API keys shown as `<redacted>`.
#[utoipa::path(
    get,
    path = "/config/app",
    operation_id = "config_app",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The effective configuration (file, then `VOLLEY_*` \
        variables, then flags), secrets shown as `<redacted>`", body = volley_config::Config))
)]
pub async fn config_app(State(state): State<FrontState>) -> Json<volley_config::Config> {
    Json(state.inner.config.clone())
}

/// `GET /metrics`: this front's own metrics, Prometheus text (the controller's and the
/// agents' are on their ops ports; see docs/operations.md).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This front's own metrics in the Prometheus text \
        exposition format 0.0.4 (the controller's and the agents' are on their ops ports)",
        content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<FrontState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.ops.render(),
    )
        .into_response()
}
