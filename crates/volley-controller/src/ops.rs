//! The controller's ops port: its metrics and its readiness.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::Map;
use volley_ops::{Ops, ProcessCollector};

use crate::Serving;

/// The controller's `/metrics`, `/healthz` and `/readyz`: ready while it leads (its store
/// open) or stands by.
pub(crate) fn ops(serving: Arc<Serving>) -> Ops {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::default()));
    Ops::new(
        "controller",
        registry,
        Arc::new(move || {
            let serving = serving.clone();
            Box::pin(async move {
                let mut detail = Map::new();
                let leads = serving.current.load().is_some();
                detail.insert("leader".into(), leads.into());
                Ok(detail)
            })
        }),
    )
}
