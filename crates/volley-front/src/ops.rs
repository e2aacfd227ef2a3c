//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`, `/stat/app`, `/stat/runtime`,
//! `/config/app`, and the monitoring endpoints of gorush (`/api/stat/app`, `/api/stat/go`,
//! `/sys/stats`, `/api/config`) and gaurun (`/stat/app`, `/stat/go`) in their shapes.
//!
//! They take no API key: they show no token, no payload and no secret (API keys print as
//! `<redacted>`), but they do show app names and cluster shape, so firewall them from the
//! public side (see `docs/api.md`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use volley_contracts::{ClusterStats, Platform};

use crate::error::{ApiError, Code};
use crate::FrontState;

/// How long `/readyz` waits for the controller.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

async fn stats(state: &FrontState) -> Result<ClusterStats, ApiError> {
    let mut context = FrontState::query_context();
    context.deadline = std::time::Instant::now() + READY_TIMEOUT;
    state
        .controller()
        .stats(context)
        .await
        .map_err(|rpc| state.rpc_failed(&rpc))?
        .map_err(ApiError::from_wire)
}

/// `GET /healthz`: 200 whenever the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the controller answers and the front is not draining.
pub async fn readyz(State(state): State<FrontState>) -> Response {
    if state.is_draining() {
        return ApiError::draining().into_response();
    }
    match stats(&state).await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(error) => error.into_response(),
    }
}

#[derive(Serialize, Default)]
struct PushCounts {
    push_success: u64,
    push_error: u64,
}

/// `GET /stat/app` and `GET /api/stat/app`: gaurun's and gorush's statistics shapes in one
/// answer (each client reads its own keys), filled from the controller, plus Volley's queues,
/// agents and rejections.
pub async fn stat_app(State(state): State<FrontState>) -> Result<Json<Value>, ApiError> {
    let stats = stats(&state).await?;
    let mut ios = PushCounts::default();
    let mut android = PushCounts::default();
    for counters in &stats.apps {
        let side = match counters.platform {
            Platform::Apns => &mut ios,
            Platform::Fcm => &mut android,
        };
        side.push_success += counters.success;
        side.push_error += counters.error;
    }
    let agents: Vec<Value> = stats
        .agents
        .iter()
        .map(|a| {
            json!({
                "id": a.id.0,
                "name": a.name,
                "addr": a.addr,
                "in_flight": a.in_flight,
                "chunks_done": a.chunks_done,
            })
        })
        .collect();
    let apps: Vec<Value> = stats
        .apps
        .iter()
        .map(|c| {
            json!({
                "app": c.app,
                "platform": c.platform.as_str(),
                "push_success": c.success,
                "push_error": c.error,
            })
        })
        .collect();
    let front_rejections: serde_json::Map<String, Value> = state
        .inner
        .metrics
        .rejections()
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), json!(n)))
        .collect();
    let controller_rejections: serde_json::Map<String, Value> = stats
        .rejections
        .iter()
        .map(|r| (r.reason.clone(), json!(r.count)))
        .collect();
    let webhooks: Vec<Value> = stats
        .webhooks
        .iter()
        .map(|w| {
            json!({
                "app": w.app,
                "pending_batches": w.pending_batches,
                "delivered_batches": w.delivered_batches,
                "failed_attempts": w.failed_attempts,
            })
        })
        .collect();
    let queues: Vec<Value> = stats
        .queues
        .iter()
        .map(|q| {
            json!({
                "app": q.app,
                "platform": q.platform.as_str(),
                "chunks": q.chunks,
                "notifications": q.notifications,
                "in_flight": q.in_flight,
                "waiting_for_agent": q.waiting_for_agent,
                "paused_agents": q.paused_agents,
                "waiting": q.waiting,
            })
        })
        .collect();
    let in_flight: u64 = stats.agents.iter().map(|a| u64::from(a.in_flight)).sum();
    let window = u64::from(state.inner.config.agent.window);
    let success = ios.push_success + android.push_success;
    let error = ios.push_error + android.push_error;
    Ok(Json(json!({
        // gorush
        "version": env!("CARGO_PKG_VERSION"),
        "busy_workers": in_flight,
        "success_tasks": success,
        "failure_tasks": error,
        "submitted_tasks": success + error + stats.pending_notifications,
        "huawei": PushCounts::default(),
        // gaurun
        "queue_max": stats.max_pending_notifications,
        "pusher_max": window * stats.agents.len() as u64,
        "pusher_count": in_flight,
        // both, then Volley's own
        "queue_usage": stats.queue_usage,
        "queues": queues,
        "max_pending_notifications": stats.max_pending_notifications,
        "rejections": {"front": front_rejections, "controller": controller_rejections},
        "webhooks": webhooks,
        "total_count": success + error,
        "ios": ios,
        "android": android,
        "pending_notifications": stats.pending_notifications,
        "active_jobs": stats.active_jobs,
        "chunks_redispatched": stats.chunks_redispatched,
        "workers": stats.agents.len(),
        "agents": agents,
        "apps": apps,
    })))
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

/// `GET /stat/go` (gaurun) and `GET /api/stat/go` (gorush): the runtime in the shape of the
/// Go handler both serve there (golang-stats-api-handler). A Rust process has no goroutines
/// or garbage collector: `goroutine_num` is Tokio's live tasks, `gomaxprocs` its workers,
/// memory comes from `/proc/self/status` (`memory_sys` and `memory_alloc` resident memory,
/// `heap_sys` the data segment, `memory_stack` the main stack), and the GC fields are zero.
pub async fn stat_go() -> Json<Value> {
    let metrics = tokio::runtime::Handle::current().metrics();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| proc_status_bytes(&status, name).unwrap_or(0);
    let rss = field("VmRSS:");
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    Json(json!({
        "time": unix_nanos() as u64,
        "go_version": concat!("volley ", env!("CARGO_PKG_VERSION"), " (rust)"),
        "go_os": std::env::consts::OS,
        "go_arch": std::env::consts::ARCH,
        "cpu_num": cpus,
        "goroutine_num": metrics.num_alive_tasks(),
        "gomaxprocs": metrics.num_workers(),
        "cgo_call_num": 0,
        "memory_alloc": rss,
        "memory_total_alloc": rss,
        "memory_sys": rss,
        "memory_lookups": 0,
        "memory_mallocs": 0,
        "memory_frees": 0,
        "memory_stack": field("VmStk:"),
        "heap_alloc": rss,
        "heap_sys": field("VmData:"),
        "heap_idle": 0,
        "heap_inuse": rss,
        "heap_released": 0,
        "heap_objects": 0,
        "gc_next": 0,
        "gc_last": 0,
        "gc_num": 0,
        "gc_per_second": 0,
        "gc_pause_per_second": 0,
        "gc_pause": [],
    }))
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

/// `GET /sys/stats`: gorush's HTTP statistics (the shape of its `thoas/stats` middleware),
/// over every request this front answered since it started. `status_code_count` and `count`
/// cover the same span as their `total_` twins.
pub async fn sys_stats(State(state): State<FrontState>) -> Json<Value> {
    let answered = state.inner.metrics.answered();
    let by_status: serde_json::Map<String, Value> = answered
        .by_status
        .iter()
        .map(|(status, n)| {
            let status = status.map_or_else(|| "other".to_owned(), |s| s.to_string());
            (status, json!(n))
        })
        .collect();
    let uptime = state.inner.started.elapsed();
    let average = answered.nanos.checked_div(answered.count).unwrap_or(0);
    let now = unix_nanos();
    Json(json!({
        "pid": std::process::id(),
        "uptime": go_duration(u64::try_from(uptime.as_nanos()).unwrap_or(u64::MAX)),
        "uptime_sec": uptime.as_secs_f64(),
        "time": format!("{}", now / 1_000_000_000),
        "unixtime": (now / 1_000_000_000) as u64,
        "status_code_count": by_status,
        "total_status_code_count": by_status,
        "count": answered.count,
        "total_count": answered.count,
        "total_response_time": go_duration(answered.nanos),
        "total_response_time_sec": answered.nanos as f64 / 1e9,
        "total_response_size": 0,
        "average_response_size": 0,
        "average_response_time": go_duration(average),
        "average_response_time_sec": average as f64 / 1e9,
        "total_metrics_counts": {},
        "average_metrics_timers": {},
    }))
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

/// `GET /stat/runtime`: uptime, version, Tokio's workers and tasks, memory.
pub async fn stat_runtime(State(state): State<FrontState>) -> Json<Value> {
    let metrics = tokio::runtime::Handle::current().metrics();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.inner.started.elapsed().as_secs(),
        "tokio_workers": metrics.num_workers(),
        "tokio_alive_tasks": metrics.num_alive_tasks(),
        "rss_bytes": rss_bytes(),
        "draining": state.is_draining(),
        "certificate_expires_at": state.certificate_not_after(),
    }))
}

/// `GET /config/app`: the effective configuration, API keys shown as `<redacted>`.
pub async fn config_app(State(state): State<FrontState>) -> Result<Json<Value>, ApiError> {
    serde_json::to_value(&state.inner.config)
        .map(Json)
        .map_err(|_| ApiError::new(Code::Internal, "the configuration cannot be shown"))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<FrontState>) -> Response {
    let stats = stats(&state).await.ok();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = state.inner.metrics.render(stats.as_ref());
            if let Some(not_after) = state.certificate_not_after() {
                use std::fmt::Write as _;
                let _ = write!(
                    text,
                    "# HELP volley_front_certificate_expiry_timestamp_seconds When this front's link certificate expires.\n\
                     # TYPE volley_front_certificate_expiry_timestamp_seconds gauge\n\
                     volley_front_certificate_expiry_timestamp_seconds {not_after}\n"
                );
            }
            text
        },
    )
        .into_response()
}
