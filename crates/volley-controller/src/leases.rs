//! Chunk leases: which agent holds which chunk, with which epoch, until when.
//!
//! A lease is on disk before its chunk goes out (one commit for the chunks of one `deliver`
//! call), so that a controller that dies while chunks are out counts their tokens as possible
//! duplicates when it resends them. Agents renew the leases of the chunks they hold with each
//! heartbeat; one that lapses cancels its call's token, and the dispatcher abandons the call.
//!
//! A controller that starts finds the leases its predecessor wrote for chunks not done: those
//! chunks may still be out with agents, which keep sending them across a controller change.
//! They wait here, unclaimed, for a lease time; an agent that names one in a heartbeat with
//! the same epoch claims it, and it is leased to that agent again (adopted: no `deliver` call
//! waits for it; its report comes in a `report` call). What is still unclaimed after the
//! grace goes out again (`orphans.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use volley_contracts::{AgentId, ChunkId, Held};

use crate::registry::AgentCounters;
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
    /// Claimed after a restart: no `deliver` call waits for it.
    adopted: bool,
}

/// A chunk leased by an earlier controller and not done.
#[derive(Debug)]
enum Orphan {
    /// Waiting for the agent that holds it, if any, to claim it.
    Unclaimed(Work),
    /// Claimed by `agent` and leased to it (in `leases`); its report comes with `report`.
    Adopted {
        agent: AgentId,
        work: Work,
        counters: AgentCounters,
    },
}

/// An adopted chunk taken back from the orphans: to be settled by whoever took it.
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) work: Work,
    /// The counters of the agent it was adopted by.
    pub(crate) counters: AgentCounters,
}

/// What a heartbeat's held chunks found.
#[derive(Debug, Default)]
pub(crate) struct Renewed {
    /// Held chunks with no lease of this agent's with that epoch.
    pub(crate) unleased: Vec<Held>,
    /// Held chunks leased to this agent by adoption: the agent must report them.
    pub(crate) adopted: Vec<ChunkId>,
}

/// Every lease out, and the chunks an earlier controller leased.
#[derive(Debug)]
pub(crate) struct Leases {
    leases: Mutex<HashMap<ChunkId, Lease>>,
    lease_time: Duration,
    /// Chunks found leased (and not done) in the store at start-up, until they are claimed and
    /// reported, or the grace ends.
    orphans: Mutex<HashMap<ChunkId, Orphan>>,
}

impl Leases {
    pub(crate) fn new(lease_time: Duration) -> Leases {
        Leases {
            leases: Mutex::default(),
            lease_time,
            orphans: Mutex::default(),
        }
    }

    /// How long a lease lasts without renewal; also how long orphans wait for a claim.
    pub(crate) fn lease_time(&self) -> Duration {
        self.lease_time
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
                        adopted: false,
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
        let chunks: Vec<(ChunkId, u32)> = works
            .iter()
            .map(|work| (work.chunk_id(), work.epoch))
            .collect();
        self.release_chunks(&chunks);
    }

    /// Ends the leases of these chunks with these epochs (those not expired or handed out
    /// again already).
    pub(crate) fn release_chunks(&self, chunks: &[(ChunkId, u32)]) {
        let mut leases = self.leases.lock();
        for (id, epoch) in chunks {
            if leases.get(id).is_some_and(|lease| lease.epoch == *epoch) {
                leases.remove(id);
            }
        }
    }

    /// Renews the leases an agent holds; returns the held chunks it has no lease of, and those
    /// it holds by adoption.
    pub(crate) fn renew(&self, agent: AgentId, held: &[Held]) -> Renewed {
        let expires = Instant::now() + self.lease_time;
        let mut leases = self.leases.lock();
        let mut renewed = Renewed::default();
        for held in held {
            match leases.get_mut(&held.chunk) {
                Some(lease) if lease.agent == agent && lease.epoch == held.epoch => {
                    lease.expires = expires;
                    if lease.adopted {
                        // Said again in every answer until the report comes: an answer can be
                        // lost.
                        renewed.adopted.push(held.chunk);
                    }
                }
                _ => renewed.unleased.push(*held),
            }
        }
        renewed
    }

    /// Keeps chunks an earlier controller leased, not done, for their agents to claim.
    pub(crate) fn restored(&self, works: Vec<Work>) {
        let mut orphans = self.orphans.lock();
        for work in works {
            orphans.insert(work.chunk_id(), Orphan::Unclaimed(work));
        }
    }

    /// Leases a restored chunk to the agent that claims it with the epoch it was leased with;
    /// returns the lease's token (cancelled when the lease expires or the chunk is settled),
    /// or `None` when there is no such chunk to claim.
    pub(crate) fn claim(
        &self,
        agent: AgentId,
        held: &Held,
        counters: &AgentCounters,
    ) -> Option<CancellationToken> {
        let mut orphans = self.orphans.lock();
        let orphan = orphans.get_mut(&held.chunk)?;
        let Orphan::Unclaimed(work) = orphan else {
            return None;
        };
        if work.epoch != held.epoch {
            return None;
        }
        let lost = CancellationToken::new();
        self.leases.lock().insert(
            held.chunk,
            Lease {
                agent,
                epoch: held.epoch,
                expires: Instant::now() + self.lease_time,
                lost: lost.clone(),
                adopted: true,
            },
        );
        let Some(Orphan::Unclaimed(work)) = orphans.remove(&held.chunk) else {
            unreachable!("checked above under the same lock");
        };
        orphans.insert(
            held.chunk,
            Orphan::Adopted {
                agent,
                work,
                counters: counters.clone(),
            },
        );
        Some(lost)
    }

    /// Takes back a chunk adopted by `agent` with `epoch`, ending its lease: the caller settles
    /// it. `None` when it is not that agent's with that epoch (or someone settled it already).
    pub(crate) fn take_adopted(
        &self,
        agent: AgentId,
        chunk: ChunkId,
        epoch: u32,
    ) -> Option<Adopted> {
        let mut orphans = self.orphans.lock();
        match orphans.get(&chunk) {
            Some(Orphan::Adopted {
                agent: holder,
                work,
                ..
            }) if *holder == agent && work.epoch == epoch => {}
            _ => return None,
        }
        let Some(Orphan::Adopted { work, counters, .. }) = orphans.remove(&chunk) else {
            unreachable!("checked above under the same lock");
        };
        let mut leases = self.leases.lock();
        if leases
            .get(&chunk)
            .is_some_and(|lease| lease.agent == agent && lease.epoch == epoch)
        {
            if let Some(lease) = leases.remove(&chunk) {
                // Its watcher wakes and finds it settled.
                lease.lost.cancel();
            }
        }
        Some(Adopted { work, counters })
    }

    /// Takes the restored chunks nobody claimed (the grace is over).
    pub(crate) fn unclaimed(&self) -> Vec<Work> {
        self.take_unclaimed(|_| true)
    }

    /// Takes the unclaimed restored chunks of a job (it was cancelled).
    pub(crate) fn unclaimed_of(&self, job: volley_contracts::JobId) -> Vec<Work> {
        self.take_unclaimed(|work| work.job.id == job)
    }

    fn take_unclaimed(&self, mut which: impl FnMut(&Work) -> bool) -> Vec<Work> {
        let mut orphans = self.orphans.lock();
        let ids: Vec<ChunkId> = orphans
            .iter()
            .filter(|(_, orphan)| matches!(orphan, Orphan::Unclaimed(work) if which(work)))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| match orphans.remove(&id) {
                Some(Orphan::Unclaimed(work)) => Some(work),
                _ => None,
            })
            .collect()
    }

    /// Expires the leases their agents stopped renewing; returns how many.
    pub(crate) fn expire(&self, now: Instant) -> u64 {
        let mut expired = 0;
        self.leases.lock().retain(|chunk, lease| {
            if lease.expires <= now {
                tracing::warn!(%chunk, agent = %lease.agent, epoch = lease.epoch, "lease expired");
                lease.lost.cancel();
                expired += 1;
                false
            } else {
                true
            }
        });
        expired
    }

    /// How often [`Leases::expire`] should run.
    pub(crate) fn tick(&self) -> Duration {
        (self.lease_time / 4).max(Duration::from_millis(25))
    }
}
