//! Chunks a controller finds leased in its store when it starts: its predecessor (killed,
//! restarted, or the leader before a fail-over) handed them out and stopped before their
//! reports were on disk.
//!
//! Agents do not stop a chunk when the controller that handed it out goes: they keep sending
//! it, keep its report, and name it in their heartbeats with its epoch (the agent's
//! `holdings.rs`). So a restored chunk that was leased is not queued again at once: it waits
//! up to a lease time (`controller.lease_time`) for a claim. An agent whose heartbeat names it
//! with the epoch of the lease on disk adopts it: it is leased to that agent (renewed by its
//! heartbeats, expiring like any lease), counted out, and settled when the agent's `report`
//! brings its outcome. What nobody claimed within the grace goes back to its queue with the
//! next epoch, its tokens counted as possible duplicates, as every chunk out at a restart used
//! to be.
//!
//! The grace is safe because an agent stops sending the chunks it could not renew for a lease
//! time: any holder that has not claimed a chunk by the end of the grace, counted from this
//! controller's start, has stopped it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use volley_contracts::{AgentId, ChunkOutcome, ErrorCode, Held, Renewal, WireError};

use crate::dispatcher::HandBack;
use crate::scheduler::Work;
use crate::store::Write;
use crate::Core;

impl Core {
    /// Keeps restored chunks that were leased for their agents to claim, and starts the grace
    /// after which those unclaimed go out again.
    pub(crate) fn await_claims(self: &Arc<Self>, works: Vec<Work>) {
        if works.is_empty() {
            return;
        }
        let grace = self.leases.lease_time();
        tracing::info!(
            chunks = works.len(),
            ?grace,
            "chunks that were out at the restart wait for their agents' claims"
        );
        self.leases.restored(works);
        let core = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = core.shutdown.cancelled() => {}
                () = tokio::time::sleep(grace) => core.end_grace(),
            }
        });
    }

    /// The grace is over: the restored chunks nobody claimed go out again, their tokens
    /// counted as possible duplicates (their agent may have sent some before it stopped).
    pub(crate) fn end_grace(&self) {
        let unclaimed = self.leases.unclaimed();
        if unclaimed.is_empty() {
            tracing::info!("grace over: every chunk out at the restart was claimed");
            return;
        }
        tracing::warn!(
            chunks = unclaimed.len(),
            "grace over: chunks out at the restart unclaimed; sending them again"
        );
        for work in unclaimed {
            let retry = Work {
                epoch: work.epoch + 1,
                ..work
            };
            if !retry.job.is_cancelled() {
                retry.job.note_redispatch(&retry.spec);
                self.store.write_later(Write::Duplicates {
                    id: retry.job.id,
                    count: retry.spec.outgoing() as u64,
                });
                self.metrics.chunks_redispatched.inc();
            }
            self.hand_back(retry, None);
        }
    }

    /// Answers the held chunks a heartbeat named that have no lease of this agent's: those
    /// restored and unclaimed with the same epoch are adopted; the rest are released, once the
    /// store has committed what was queued before (their reports, if they were settled).
    pub(crate) async fn answer_held(
        self: &Arc<Self>,
        agent: AgentId,
        unleased: Vec<Held>,
        mut renewal: Renewal,
    ) -> Renewal {
        if unleased.is_empty() {
            return renewal;
        }
        // Adopted before the first await: an answer lost with a dropped call does not undo
        // the claim, and the next heartbeat names the chunk as adopted again.
        let handle = self.registry.handle(agent);
        for held in unleased {
            let claimed = handle.as_ref().and_then(|(counters, stop)| {
                let lost = self.leases.claim(agent, &held, counters)?;
                Some((counters.clone(), stop.clone(), lost))
            });
            match claimed {
                Some((counters, stop, lost)) => {
                    counters.in_flight.fetch_add(1, Ordering::Relaxed);
                    self.out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%agent, chunk = %held.chunk, epoch = held.epoch, "chunk claimed");
                    tokio::spawn(self.clone().watch_adopted(agent, held, lost, stop));
                    renewal.claimed.push(held.chunk);
                }
                None => renewal.released.push(held.chunk),
            }
        }
        if !renewal.released.is_empty() {
            // A chunk settled a moment ago has its report queued for the store, not committed:
            // the agent keeps its copy until this commit is through.
            if let Err(error) = self.store.write(Write::all(Vec::new())).await {
                tracing::warn!(%error, "cannot commit before releasing held chunks; the agent keeps them");
                renewal.released.clear();
            }
        }
        renewal
    }

    /// Watches an adopted chunk until it is settled: if its lease expires or its agent is
    /// dropped before the report comes, it goes out again, counted as possible duplicates.
    async fn watch_adopted(
        self: Arc<Self>,
        agent: AgentId,
        held: Held,
        lost: CancellationToken,
        agent_stop: CancellationToken,
    ) {
        let why = tokio::select! {
            () = self.shutdown.cancelled() => return,
            () = lost.cancelled() => HandBack::LeaseExpired,
            () = agent_stop.cancelled() => HandBack::AgentDropped,
        };
        // Nothing to take when the report settled it (that also cancels `lost`).
        if let Some(adopted) = self.leases.take_adopted(agent, held.chunk, held.epoch) {
            self.settle_adopted(agent, adopted, Err(why));
        }
    }

    /// Settles the outcomes an agent reports for the chunks it adopted; answers once those
    /// taken are committed. Reports for chunks that are not adopted by this agent with that
    /// epoch are ignored: the chunk is someone else's, or settled already.
    pub(crate) async fn take_reports(
        &self,
        agent: AgentId,
        reports: Vec<ChunkOutcome>,
    ) -> Result<(), WireError> {
        let mut taken = 0usize;
        for report in reports {
            let Some(adopted) = self.leases.take_adopted(agent, report.chunk, report.epoch) else {
                tracing::debug!(%agent, chunk = %report.chunk, epoch = report.epoch, "report ignored: the chunk is not adopted by this agent with that epoch");
                continue;
            };
            let outcome = report.outcome.map_err(|error| {
                // A part refused or handed back whole goes out again as the whole chunk.
                if !report.positions.is_empty() {
                    self.count_lost_part(&adopted.work.job, adopted.work.spec.len() as u64);
                }
                HandBack::of(&error)
            });
            self.settle_adopted(agent, adopted, outcome);
            taken += 1;
        }
        if taken > 0 {
            // The agent drops what it reported once answered: the reports must be on disk.
            self.store
                .write(Write::all(Vec::new()))
                .await
                .map_err(|error| WireError::new(ErrorCode::Internal, error.to_string()))?;
            tracing::info!(%agent, chunks = taken, "reports of adopted chunks recorded");
        }
        Ok(())
    }

    /// Settles an adopted chunk taken back from the leases, like a `deliver` call's answer.
    fn settle_adopted(
        &self,
        agent: AgentId,
        adopted: crate::leases::Adopted,
        outcome: Result<volley_contracts::ChunkAnswer, HandBack>,
    ) {
        let crate::leases::Adopted { work, counters } = adopted;
        self.settle(agent, &counters, work, outcome, None);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.out.fetch_sub(1, Ordering::Relaxed);
    }
}
