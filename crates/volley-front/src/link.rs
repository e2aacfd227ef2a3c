//! The front's connection to the controller, re-established after it is lost, and moved to
//! the leader when several controllers share a PostgreSQL store.
//!
//! A tarpc client whose connection closed fails every call from then on. Without a new
//! connection a front would answer 503 until restarted, even after the controller is back; so
//! the first call that finds the connection gone starts one background task that dials
//! `front.controller` again (each of its addresses in turn, with back-off) and swaps the new
//! client in. A standby's answer ("not leader", naming the leader) starts the same task,
//! which dials the named leader first. Calls keep answering 503 with `Retry-After`
//! meanwhile, and `/readyz` reports not ready; submissions wait for the new link and are sent
//! again when that is safe ([`ControllerLink::switched`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tarpc::client::RpcError;
use volley_contracts::{ControllerClient, ErrorCode, Links, WireError};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// How long a submission waits for the link to move to a new leader before it is answered
/// 503: past a standby's takeover (`controller.failover_timeout`, 5 s by default) and the new
/// leader's loading of the store.
pub(crate) const FAILOVER_WAIT: Duration = Duration::from_secs(15);

/// The current controller client and the addresses to dial again.
pub(crate) struct ControllerLink {
    client: ArcSwap<ControllerClient>,
    addrs: Vec<String>,
    /// The index in `addrs` of the controller dialled last.
    current: AtomicUsize,
    /// Where a standby said the leader is, to dial first.
    leader_hint: Mutex<Option<String>>,
    links: Links,
    reconnecting: AtomicBool,
    /// Woken when a new client is swapped in.
    swapped: tokio::sync::Notify,
}

impl ControllerLink {
    /// `client` is connected to `addrs[current]`.
    pub(crate) fn new(
        client: ControllerClient,
        addrs: Vec<String>,
        current: usize,
        links: Links,
    ) -> Arc<ControllerLink> {
        Arc::new(ControllerLink {
            client: ArcSwap::from_pointee(client),
            addrs,
            current: AtomicUsize::new(current),
            leader_hint: Mutex::new(None),
            links,
            reconnecting: AtomicBool::new(false),
            swapped: tokio::sync::Notify::new(),
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

    /// Whether several controllers are configured: submissions are then kept to be sent
    /// again to a new leader.
    pub(crate) fn follows_leader(&self) -> bool {
        self.addrs.len() > 1
    }

    /// The client to call now.
    pub(crate) fn client(&self) -> Arc<ControllerClient> {
        self.client.load_full()
    }

    /// Notes a failed call; when it says the connection is gone (or, with several
    /// controllers, that this one stopped answering), starts reconnecting (once).
    pub(crate) fn failed(self: &Arc<Self>, error: &RpcError) {
        let connection_lost = matches!(
            error,
            RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_)
        );
        // A paused or cut-off leader keeps its connections open and answers nothing: with
        // standbys to ask, a call that timed out is a reason to look for the leader.
        let silent = matches!(error, RpcError::DeadlineExceeded) && self.addrs.len() > 1;
        if connection_lost || silent {
            self.reconnect_once(error.to_string());
        }
    }

    /// Notes a controller's answer: a standby's "not leader" moves the link to the leader.
    pub(crate) fn answered(self: &Arc<Self>, error: &WireError) {
        if error.code != ErrorCode::NotLeader {
            return;
        }
        *self.leader_hint.lock() = error.leader.clone();
        self.reconnect_once(error.message.clone());
    }

    fn reconnect_once(self: &Arc<Self>, why: String) {
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let addr = &self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()];
        tracing::warn!(%addr, %why, "lost the controller; reconnecting");
        let link = self.clone();
        tokio::spawn(async move { link.reconnect().await });
    }

    /// The answer to a failed controller call; reconnects when the connection is gone.
    pub(crate) fn unreachable(self: &Arc<Self>, error: &RpcError) -> crate::error::ApiError {
        self.failed(error);
        crate::error::ApiError::controller_unreachable(error)
    }

    /// Waits until the link has a client other than `old` (the controller was reached again,
    /// or the leader found), for at most `within`; the new client, if it came.
    pub(crate) async fn switched(
        &self,
        old: &Arc<ControllerClient>,
        within: Duration,
    ) -> Option<Arc<ControllerClient>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before the check, so a swap in between is not missed.
            let swapped = self.swapped.notified();
            tokio::pin!(swapped);
            swapped.as_mut().enable();
            let now = self.client();
            if !Arc::ptr_eq(&now, old) {
                return Some(now);
            }
            tokio::time::timeout_at(deadline, swapped).await.ok()?;
        }
    }

    async fn reconnect(&self) {
        let mut delay = FIRST_RETRY;
        loop {
            // The leader a standby named first; then every address, from the one after the
            // controller that failed (itself last: it may come back, but a standby may lead
            // already).
            let hint = self.leader_hint.lock().take();
            if let Some(leader) = hint {
                if let Ok(client) =
                    volley_contracts::connect_controller(leader.as_str(), &self.links).await
                {
                    if let Some(index) = self.addrs.iter().position(|addr| *addr == leader) {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    self.client.store(Arc::new(client));
                    self.swapped.notify_waiters();
                    tracing::info!(addr = %leader, "connected to the controller's leader");
                    break;
                }
            }
            let from = self.current.load(Ordering::Relaxed) + 1;
            match volley_contracts::connect_first_controller(&self.addrs, from, &self.links).await {
                Ok((client, index)) => {
                    self.current.store(index, Ordering::Relaxed);
                    self.client.store(Arc::new(client));
                    self.swapped.notify_waiters();
                    tracing::info!(addr = %self.addrs[index], "reconnected to the controller");
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, "controller still unreachable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
        self.reconnecting.store(false, Ordering::Release);
    }
}
