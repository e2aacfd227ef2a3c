//! The chunks an agent holds: from the `deliver` call that brings one until the controller
//! lets it go.
//!
//! A chunk is delivered on a task of its own, which the `deliver` call only waits for. When
//! the controller that made the call stops (killed, or failed over to a standby), tarpc drops
//! the call's handler with the link; a delivery dropped with it would stop halfway, and the
//! next controller would send the whole chunk again. Instead the chunk goes on, its outcome
//! is kept here, and the agent keeps naming it in its heartbeats: the next controller finds
//! the chunk leased in its store with the same epoch, claims it in a heartbeat answer, and
//! gets the outcome with a `report` call (ADR 008).
//!
//! Outcomes answered through a live call are kept too, until a heartbeat answer releases
//! them: the controller commits a chunk's report a little after it gets it (with other
//! progress, within 100 ms), and one that stopped in between would send the chunk again. A
//! controller releases a held chunk only once no lease of it is this agent's and its store has
//! committed what was queued before, so a released outcome is on disk or not wanted.
//!
//! A release of a chunk still being sent (its lease expired or went to another agent) stops
//! its sends at once, and so does a lapse of the agent's own leases (heartbeats failing for a
//! whole lease time): the chunk is someone else's by then.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use volley_contracts::{ChunkAnswer, ChunkId, ChunkOutcome, Held, Renewal, WireError};

/// Every chunk the agent holds, and a signal for reports that are due.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    chunks: Mutex<HashMap<ChunkId, Holding>>,
    /// Notified when a claimed chunk has an outcome to report.
    due: Notify,
    /// Notified when a heartbeat is wanted before the next tick.
    beat: Notify,
}

/// One held chunk.
#[derive(Debug)]
struct Holding {
    /// The epoch it was handed out with.
    epoch: u32,
    /// Cancelled when the chunk stops being this agent's: its sends stop.
    lease: CancellationToken,
    /// What became of it; `None` while it is being sent.
    outcome: Option<Result<ChunkAnswer, WireError>>,
    /// The chunk's positions it was handed (`Chunk::positions`; empty: the whole chunk).
    positions: Vec<u32>,
    /// Claimed by the controller of the current registration: no call waits for its outcome,
    /// which goes in a `report` call instead.
    claimed: bool,
}

impl Holdings {
    /// Holds a chunk handed out with `epoch`; returns its lease token, cancelled when the
    /// chunk is no longer this agent's. An earlier hand-out of the same chunk still held is
    /// over: the controller gave up on it before handing the chunk out again.
    pub(crate) fn hold(
        &self,
        chunk: ChunkId,
        epoch: u32,
        positions: Vec<u32>,
    ) -> CancellationToken {
        let lease = CancellationToken::new();
        let holding = Holding {
            epoch,
            lease: lease.clone(),
            outcome: None,
            positions,
            claimed: false,
        };
        if let Some(earlier) = self.chunks.lock().insert(chunk, holding) {
            earlier.lease.cancel();
        }
        lease
    }

    /// Keeps the outcome of a chunk's hand-out with `epoch`, if that hand-out is still held.
    pub(crate) fn finish(
        &self,
        chunk: ChunkId,
        epoch: u32,
        outcome: &Result<ChunkAnswer, WireError>,
    ) {
        let mut chunks = self.chunks.lock();
        let Some(holding) = chunks.get_mut(&chunk).filter(|h| h.epoch == epoch) else {
            return;
        };
        holding.outcome = Some(outcome.clone());
        if holding.claimed {
            self.due.notify_one();
        }
    }

    /// Every held chunk with its epoch, for a heartbeat.
    pub(crate) fn held(&self) -> Vec<Held> {
        self.chunks
            .lock()
            .iter()
            .map(|(chunk, holding)| Held {
                chunk: *chunk,
                epoch: holding.epoch,
            })
            .collect()
    }

    /// Applies a heartbeat's answer: released chunks are dropped (those still being sent stop
    /// at once), claimed ones will be reported. Returns how many chunks stopped.
    pub(crate) fn renewed(&self, renewal: &Renewal) -> usize {
        let mut chunks = self.chunks.lock();
        let mut stopped = 0;
        for chunk in &renewal.released {
            if let Some(holding) = chunks.remove(chunk) {
                if holding.outcome.is_none() {
                    holding.lease.cancel();
                    stopped += 1;
                }
            }
        }
        let mut due = false;
        for chunk in &renewal.claimed {
            if let Some(holding) = chunks.get_mut(chunk) {
                holding.claimed = true;
                due |= holding.outcome.is_some();
            }
        }
        if due {
            self.due.notify_one();
        }
        stopped
    }

    /// The controller gave up on the call that brought these hand-outs, on a link still open:
    /// those still being sent are someone else's now and stop. Returns how many stopped.
    pub(crate) fn abandon(&self, hand_outs: &[(ChunkId, u32)]) -> usize {
        let mut chunks = self.chunks.lock();
        let mut stopped = 0;
        for (chunk, epoch) in hand_outs {
            let sending = chunks
                .get(chunk)
                .is_some_and(|holding| holding.epoch == *epoch && holding.outcome.is_none());
            if sending {
                if let Some(holding) = chunks.remove(chunk) {
                    holding.lease.cancel();
                    stopped += 1;
                }
            }
        }
        stopped
    }

    /// The agent's leases lapsed (its heartbeats failed for a lease time) or its controller
    /// forgot it: the chunks being sent are someone else's now and stop. Finished chunks keep
    /// their outcomes: a controller that restarted may still claim them. Returns how many
    /// stopped.
    pub(crate) fn lapse(&self) -> usize {
        let mut stopped = 0;
        self.chunks.lock().retain(|_, holding| {
            if holding.outcome.is_some() {
                return true;
            }
            holding.lease.cancel();
            stopped += 1;
            false
        });
        stopped
    }

    /// A new registration: claims were the last controller's; the next one claims afresh.
    pub(crate) fn unclaim_all(&self) {
        for holding in self.chunks.lock().values_mut() {
            holding.claimed = false;
        }
    }

    /// Waits until a claimed chunk may have an outcome to report.
    pub(crate) async fn report_due(&self) {
        self.due.notified().await;
    }

    /// Asks for a heartbeat now (a draining agent wants its releases).
    pub(crate) fn ask_beat(&self) {
        self.beat.notify_one();
    }

    /// Waits until a heartbeat is asked for.
    pub(crate) async fn beat_asked(&self) {
        self.beat.notified().await;
    }

    /// Outcomes of claimed chunks, as many as fit in about `budget` bytes on the wire (at
    /// least one).
    pub(crate) fn due(&self, budget: usize) -> Vec<ChunkOutcome> {
        let chunks = self.chunks.lock();
        let mut due = Vec::new();
        let mut bytes = 0;
        for (chunk, holding) in chunks.iter() {
            let Some(outcome) = holding.outcome.as_ref().filter(|_| holding.claimed) else {
                continue;
            };
            let size = wire_size(outcome);
            if !due.is_empty() && bytes + size > budget {
                break;
            }
            bytes += size;
            due.push(ChunkOutcome {
                chunk: *chunk,
                epoch: holding.epoch,
                outcome: outcome.clone(),
                positions: holding.positions.clone(),
            });
        }
        due
    }

    /// The controller answered a `report` call: those outcomes are on its disk, or it did not
    /// want them (the chunks are someone else's). Either way they are dropped.
    pub(crate) fn reported(&self, reports: &[ChunkOutcome]) {
        let mut chunks = self.chunks.lock();
        for report in reports {
            if chunks
                .get(&report.chunk)
                .is_some_and(|holding| holding.epoch == report.epoch)
            {
                chunks.remove(&report.chunk);
            }
        }
    }

    /// How many chunks are held: being sent, or finished and not released yet.
    pub(crate) fn len(&self) -> usize {
        self.chunks.lock().len()
    }

    /// How many held chunks are being sent.
    pub(crate) fn sending(&self) -> usize {
        self.chunks
            .lock()
            .values()
            .filter(|holding| holding.outcome.is_none())
            .count()
    }
}

/// About how many bytes an outcome takes in bincode: its fixed part, and each listed token's
/// index and reason.
fn wire_size(outcome: &Result<ChunkAnswer, WireError>) -> usize {
    const FIXED: usize = 64;
    match outcome {
        Ok(answer) => {
            let report = &answer.report;
            FIXED
                + 4 * (answer.returned.len() + answer.positions.len())
                + report
                    .invalid
                    .iter()
                    .map(|(_, reason, _)| reason.len() + 24)
                    .sum::<usize>()
                + report
                    .failed
                    .iter()
                    .map(|failure| failure.class.len() + failure.reason.len() + 24)
                    .sum::<usize>()
        }
        Err(error) => FIXED + error.message.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_contracts::JobId;

    fn chunk(index: u32) -> ChunkId {
        ChunkId {
            job: JobId(uuid::Uuid::nil()),
            index,
        }
    }

    fn delivered(n: u32) -> Result<ChunkAnswer, WireError> {
        Ok(ChunkAnswer::whole(volley_contracts::ChunkReport {
            delivered: n,
            ..volley_contracts::ChunkReport::default()
        }))
    }

    #[test]
    fn an_outcome_is_held_until_released_and_reported_only_once_claimed() {
        let holdings = Holdings::default();
        let lease = holdings.hold(chunk(0), 3, Vec::new());
        holdings.hold(chunk(1), 0, Vec::new());
        holdings.finish(chunk(0), 3, &delivered(5));
        assert_eq!(holdings.len(), 2, "a finished chunk stays held");
        assert_eq!(holdings.sending(), 1);
        assert!(holdings.due(1 << 20).is_empty(), "nobody claimed it");
        // A controller that restarted claims chunk 0; chunk 1 is someone else's now.
        let stopped = holdings.renewed(&Renewal {
            released: vec![chunk(1)],
            claimed: vec![chunk(0)],
        });
        assert_eq!(stopped, 1);
        assert!(
            !lease.is_cancelled(),
            "a finished chunk's token is left alone"
        );
        let due = holdings.due(1 << 20);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].chunk, due[0].epoch), (chunk(0), 3));
        assert_eq!(due[0].outcome, delivered(5));
        holdings.reported(&due);
        assert_eq!(holdings.len(), 0);
    }

    #[test]
    fn a_release_stops_the_sends_and_a_late_outcome_is_dropped() {
        let holdings = Holdings::default();
        let lease = holdings.hold(chunk(0), 0, Vec::new());
        holdings.renewed(&Renewal {
            released: vec![chunk(0)],
            claimed: Vec::new(),
        });
        assert!(lease.is_cancelled());
        holdings.finish(chunk(0), 0, &delivered(1));
        assert_eq!(holdings.len(), 0);
    }

    #[test]
    fn a_lapse_stops_what_is_being_sent_and_keeps_what_finished() {
        let holdings = Holdings::default();
        let sending = holdings.hold(chunk(0), 0, Vec::new());
        let finished = holdings.hold(chunk(1), 0, Vec::new());
        holdings.finish(chunk(1), 0, &delivered(1));
        assert_eq!(holdings.lapse(), 1);
        assert!(sending.is_cancelled());
        assert!(!finished.is_cancelled());
        assert_eq!(holdings.held().len(), 1);
        // The next registration's controller claims afresh.
        holdings.renewed(&Renewal {
            released: Vec::new(),
            claimed: vec![chunk(1)],
        });
        holdings.unclaim_all();
        assert!(holdings.due(1 << 20).is_empty());
    }

    #[test]
    fn an_abandoned_call_stops_what_it_still_sends() {
        let holdings = Holdings::default();
        let sending = holdings.hold(chunk(0), 2, Vec::new());
        let finished = holdings.hold(chunk(1), 2, Vec::new());
        holdings.finish(chunk(1), 2, &delivered(1));
        let other = holdings.hold(chunk(2), 5, Vec::new());
        assert_eq!(
            holdings.abandon(&[(chunk(0), 2), (chunk(1), 2), (chunk(2), 4)]),
            1
        );
        assert!(sending.is_cancelled());
        assert!(!finished.is_cancelled());
        assert!(!other.is_cancelled(), "another hand-out of the chunk");
        assert_eq!(holdings.len(), 2);
    }

    #[test]
    fn a_new_hand_out_replaces_the_old_one() {
        let holdings = Holdings::default();
        let old = holdings.hold(chunk(0), 0, Vec::new());
        let new = holdings.hold(chunk(0), 1, Vec::new());
        assert!(old.is_cancelled());
        holdings.finish(chunk(0), 0, &delivered(1));
        assert_eq!(
            holdings.sending(),
            1,
            "the old hand-out's outcome is not the new one's"
        );
        assert!(!new.is_cancelled());
    }

    #[test]
    fn reports_are_batched_by_size() {
        let holdings = Holdings::default();
        for index in 0..10 {
            holdings.hold(chunk(index), 0, Vec::new());
            holdings.finish(chunk(index), 0, &delivered(1));
        }
        holdings.renewed(&Renewal {
            released: Vec::new(),
            claimed: (0..10).map(chunk).collect(),
        });
        assert_eq!(holdings.due(200).len(), 3, "64 bytes each");
        assert_eq!(holdings.due(0).len(), 1, "at least one");
        assert_eq!(holdings.due(1 << 20).len(), 10);
    }
}
