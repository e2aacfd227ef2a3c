//! The front's connection to the controller, re-established after it is lost.
//!
//! A tarpc client whose connection closed fails every call from then on. Without a new
//! connection a front would answer 503 until restarted, even after the controller is back; so
//! the first call that finds the connection gone starts one background task that dials
//! `front.controller` again (with back-off) and swaps the new client in. Calls keep answering
//! 503 with `Retry-After` meanwhile, and `/readyz` reports not ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tarpc::client::RpcError;
use volley_contracts::{ControllerClient, Links};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The current controller client and the address to dial again.
pub(crate) struct ControllerLink {
    client: ArcSwap<ControllerClient>,
    addr: String,
    links: Links,
    reconnecting: AtomicBool,
}

impl ControllerLink {
    pub(crate) fn new(client: ControllerClient, addr: String, links: Links) -> Arc<ControllerLink> {
        Arc::new(ControllerLink {
            client: ArcSwap::from_pointee(client),
            addr,
            links,
            reconnecting: AtomicBool::new(false),
        })
    }

    /// When this front's link certificate expires, seconds since the epoch (`None` on
    /// insecure links).
    pub(crate) fn certificate_not_after(&self) -> Option<i64> {
        self.links.not_after()
    }

    /// Reloads of this front's certificate files that failed.
    pub(crate) fn certificate_reload_failures(&self) -> u64 {
        self.links.reload_failures()
    }

    /// The client to call now.
    pub(crate) fn client(&self) -> Arc<ControllerClient> {
        self.client.load_full()
    }

    /// Notes a failed call; when it says the connection is gone, starts reconnecting (once).
    pub(crate) fn failed(self: &Arc<Self>, error: &RpcError) {
        let connection_lost = matches!(
            error,
            RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_)
        );
        if !connection_lost || self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(addr = %self.addr, error = %error, "lost the controller; reconnecting");
        let link = self.clone();
        tokio::spawn(async move { link.reconnect().await });
    }

    /// The answer to a failed controller call; reconnects when the connection is gone.
    pub(crate) fn unreachable(self: &Arc<Self>, error: &RpcError) -> crate::error::ApiError {
        self.failed(error);
        crate::error::ApiError::controller_unreachable(error)
    }

    async fn reconnect(&self) {
        let mut delay = FIRST_RETRY;
        loop {
            match volley_contracts::connect_controller(self.addr.as_str(), &self.links).await {
                Ok(client) => {
                    self.client.store(Arc::new(client));
                    tracing::info!(addr = %self.addr, "reconnected to the controller");
                    break;
                }
                Err(error) => {
                    tracing::debug!(addr = %self.addr, %error, "controller still unreachable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
        self.reconnecting.store(false, Ordering::Release);
    }
}
