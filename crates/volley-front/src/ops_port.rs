//! The front's ops port: `/metrics`, `/healthz`, `/readyz` without a key, for operators.

use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::Map;
use volley_ops::{Ops, ProcessCollector};

use crate::FrontState;

/// The front's ops routes: ready while the controller answers and the front is not draining.
pub(crate) fn router(state: FrontState) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::default()));
    let ops = Ops::new(
        "front",
        registry,
        Arc::new(move || {
            let state = state.clone();
            Box::pin(async move {
                if state.is_draining() {
                    return Err("draining".to_owned());
                }
                crate::ops::controller_stats(&state)
                    .await
                    .map(|_| Map::new())
                    .map_err(|error| format!("the controller does not answer: {}", error.message))
            })
        }),
    );
    ops.router()
}
