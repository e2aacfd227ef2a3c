//! The agent's ops port: its metrics and its readiness.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::Map;
use volley_ops::{Ops, ProcessCollector};

/// The agent's `/metrics`, `/healthz` and `/readyz`.
pub(crate) fn ops() -> Ops {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::default()));
    Ops::new(
        "agent",
        registry,
        Arc::new(move || Box::pin(async move { Ok(Map::new()) })),
    )
}
