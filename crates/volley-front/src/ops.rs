//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`, `/stat/app`, `/stat/runtime`,
//! `/config/app`.
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
        .map_err(|rpc| state.rpc_failed(&rpc))
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

/// `GET /stat/app`: gaurun's statistics shape, filled from the controller.
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
    Ok(Json(json!({
        "queue_usage": stats.queue_usage,
        "queues": queues,
        "max_pending_notifications": stats.max_pending_notifications,
        "rejections": {"front": front_rejections, "controller": controller_rejections},
        "webhooks": webhooks,
        "total_count": ios.push_success + ios.push_error + android.push_success + android.push_error,
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

/// Resident memory of this process, from `/proc/self/status` (Linux only).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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
        state.inner.metrics.render(stats.as_ref()),
    )
        .into_response()
}
