//! The front's ops port: `/metrics`, `/healthz`, `/readyz` and the dashboard (`/dashboard`)
//! without a key, for operators.

use std::sync::{Arc, Weak};

use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::Map;
use volley_ops::{Ops, ProcessCollector};

use crate::dashboard::{self, Access};
use crate::metrics::{Metrics, StateGauges};
use crate::{FrontState, Inner};

/// The front's metrics and readiness: ready while the controller answers and the front is
/// not draining. It holds the front's state weakly: the state holds it.
pub(crate) fn ops(state: Weak<Inner>, metrics: Arc<Metrics>) -> Ops {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    registry.register_collector(Box::new(StateGauges(state.clone())));
    registry.register_collector(Box::new(ProcessCollector::default()));
    Ops::new(
        "front",
        registry,
        Arc::new(move || {
            let state = state.upgrade().map(|inner| FrontState { inner });
            Box::pin(async move {
                let Some(state) = state else {
                    return Err("stopped".to_owned());
                };
                if state.is_draining() {
                    return Err("draining".to_owned());
                }
                crate::ops::controller_stats(&state)
                    .await
                    .map(|_| Map::new())
                    .map_err(|error| format!("the controller does not answer: {}", error.message))
            })
        }),
    )
}

/// The front's ops routes: the probes and metrics, and the dashboard and its data, open to
/// whoever reaches the port.
pub(crate) fn router(state: FrontState) -> Router {
    let dashboard = dashboard::router(Access::Open).with_state(state.clone());
    state.inner.ops.router().merge(dashboard)
}
