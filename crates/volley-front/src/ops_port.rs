//! The front's ops port: `/metrics`, `/healthz`, `/readyz` and the dashboard (`/dashboard`)
//! without a key, for operators.

use std::sync::Arc;

use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::Map;
use volley_ops::{Ops, ProcessCollector};

use crate::dashboard::{self, Access};
use crate::FrontState;

/// The front's ops routes: ready while the controller answers and the front is not draining;
/// the dashboard and its data open to whoever reaches the port.
pub(crate) fn router(state: FrontState) -> Router {
    let dashboard = dashboard::router(Access::Open).with_state(state.clone());
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
    ops.router().merge(dashboard)
}
