//! Chunk leases: which agent holds which chunk, with which epoch, until when.
//!
//! A lease is on disk before its chunk goes out (one commit for the chunks of one `deliver`
//! call), so that a controller that dies while chunks are out counts their tokens as possible
//! duplicates when it resends them. Agents renew the leases of the chunks they hold with each
//! heartbeat; one that lapses cancels its call's token, and the dispatcher abandons the call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volley_contracts::{AgentId, ChunkId, Held};

use crate::scheduler::Work;
use crate::store::{Store, StoreError, Write};

/// A chunk out with an agent.
#[derive(Debug)]
struct Lease {
    agent: AgentId,
    epoch: u32,
    expires: Instant,
    /// Cancelled when the lease expires.
    lost: CancellationToken,
}

/// Every lease out.
#[derive(Debug)]
pub(crate) struct Leases {
    leases: Mutex<HashMap<ChunkId, Lease>>,
    lease_time: Duration,
}

impl Leases {
    pub(crate) fn new(lease_time: Duration) -> Leases {
        Leases {
            leases: Mutex::default(),
            lease_time,
        }
    }

    /// Leases a batch of chunks to an agent, durably; the token is cancelled when any of the
    /// leases expires (they expire together: the agent's heartbeats renew them all).
    pub(crate) async fn lease(
        &self,
        store: &Store,
        agent: AgentId,
        works: &[Work],
    ) -> Result<CancellationToken, StoreError> {
        let lost = CancellationToken::new();
        let expires = Instant::now() + self.lease_time;
        {
            let mut leases = self.leases.lock();
            for work in works {
                leases.insert(
                    work.chunk_id(),
                    Lease {
                        agent,
                        epoch: work.epoch,
                        expires,
                        lost: lost.clone(),
                    },
                );
            }
        }
        let writes = works
            .iter()
            .map(|work| Write::Leased {
                id: work.job.id,
                index: work.spec.index,
                epoch: work.epoch,
            })
            .collect();
        store.write(Write::all(writes)).await?;
        Ok(lost)
    }

    /// Ends the leases of a batch (those not expired already).
    pub(crate) fn release(&self, works: &[Work]) {
        let mut leases = self.leases.lock();
        for work in works {
            let id = work.chunk_id();
            if leases
                .get(&id)
                .is_some_and(|lease| lease.epoch == work.epoch)
            {
                leases.remove(&id);
            }
        }
    }

    /// Renews the leases an agent holds; returns the held chunks it no longer owns.
    pub(crate) fn renew(&self, agent: AgentId, held: &[Held]) -> Vec<ChunkId> {
        let expires = Instant::now() + self.lease_time;
        let mut leases = self.leases.lock();
        let mut revoked = Vec::new();
        for held in held {
            match leases.get_mut(&held.chunk) {
                Some(lease) if lease.agent == agent && lease.epoch == held.epoch => {
                    lease.expires = expires;
                }
                _ => revoked.push(held.chunk),
            }
        }
        revoked
    }

    /// Expires the leases their agents stopped renewing.
    pub(crate) fn expire(&self, now: Instant) {
        self.leases.lock().retain(|chunk, lease| {
            if lease.expires <= now {
                tracing::warn!(%chunk, agent = %lease.agent, epoch = lease.epoch, "lease expired");
                lease.lost.cancel();
                false
            } else {
                true
            }
        });
    }

    /// How often [`Leases::expire`] should run.
    pub(crate) fn tick(&self) -> Duration {
        (self.lease_time / 4).max(Duration::from_millis(25))
    }
}
