//! Dispatchers: one per registered agent, `window` workers each. A worker pulls its next
//! batch from the scheduler, leases it (one commit), calls the agent's `deliver`, and settles
//! each chunk: its report is recorded, or it is handed back to its own queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use volley_contracts::{
    AgentClient, AgentId, ChunkAnswer, ChunkFailure, ChunkReport, ErrorCode, JobState, WireError,
};

use crate::job::{ChunkSpec, Part};
use crate::merged;
use crate::registry::AgentCounters;
use crate::scheduler::{Batch, Work};
use crate::store::Write;
use crate::Core;

/// How long an agent that paused an app without saying until when is kept off its queue.
const DEFAULT_PAUSE: Duration = Duration::from_millis(500);

/// The longest pause an agent's refusal can impose on a queue (its breaker's cool-down cap
/// is 60 s by default): a wrong clock or a bad agent cannot park an app for good.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// How long to keep an agent off a queue after it refused a chunk for a reason it did not
/// time (an unexpected error): long enough not to spin, short enough to recover quickly.
const REFUSAL_PAUSE: Duration = Duration::from_secs(1);

/// How long a worker waits before taking work again after the store failed to record a lease.
const STORE_RETRY: Duration = Duration::from_millis(100);

/// Why a chunk's hand-out ended without a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandBack {
    /// The agent was dropped (it missed its heartbeats) while the call was out.
    AgentDropped,
    /// The chunk's lease expired: its agent stopped renewing it.
    LeaseExpired,
    /// The call failed: connection lost, deadline passed, or a malformed answer.
    CallFailed,
    /// The agent is draining and took nothing new.
    Draining,
    /// The agent paused the chunk's app (its provider's circuit is open there) and sent
    /// nothing; it is not offered the app's chunks again for this long.
    Paused { retry_after: Duration },
    /// The agent holds no credentials for the chunk's app and platform.
    NoCredentials,
    /// The agent refused the chunk for a reason of its own (an unexpected error).
    Refused,
    /// The agent cannot send the chunk at all (its rendering is invalid): it fails.
    Invalid,
}

impl HandBack {
    fn as_str(self) -> &'static str {
        match self {
            HandBack::AgentDropped => "agent dropped",
            HandBack::LeaseExpired => "lease expired",
            HandBack::CallFailed => "call failed",
            HandBack::Draining => "agent is draining",
            HandBack::Paused { .. } => "app paused on the agent",
            HandBack::NoCredentials => "agent has no credentials for it",
            HandBack::Refused => "agent refused the chunk",
            HandBack::Invalid => "agent cannot send the chunk",
        }
    }

    /// What an agent's refusal of one chunk means.
    pub(crate) fn of(error: &WireError) -> HandBack {
        match error.code {
            ErrorCode::Unavailable => HandBack::Draining,
            ErrorCode::ResourceExhausted => HandBack::Paused {
                retry_after: error
                    .retry_after_ms
                    .map_or(DEFAULT_PAUSE, Duration::from_millis)
                    .min(MAX_PAUSE),
            },
            ErrorCode::LeaseLost => HandBack::LeaseExpired,
            ErrorCode::NoCredentials => HandBack::NoCredentials,
            ErrorCode::InvalidArgument => HandBack::Invalid,
            _ => HandBack::Refused,
        }
    }
}

/// An agent's dispatcher: what its workers share.
pub(crate) struct Dispatcher {
    pub(crate) core: Arc<Core>,
    pub(crate) agent: AgentId,
    pub(crate) client: AgentClient,
    /// Cancelled when the agent is dropped: calls out are abandoned.
    pub(crate) stop: CancellationToken,
    pub(crate) counters: AgentCounters,
}

impl Dispatcher {
    /// Starts `window` workers.
    pub(crate) fn spawn(self, window: u32) {
        let dispatcher = Arc::new(self);
        for worker in 0..window.max(1) {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { dispatcher.work(worker).await });
        }
    }

    /// One worker: pulls a batch, delivers it, until the agent goes or the controller drains.
    async fn work(&self, worker: u32) {
        let core = &self.core;
        loop {
            let batch = tokio::select! {
                biased;
                () = core.draining.cancelled() => return,
                batch = core.scheduler.next(self.agent, &self.stop) => match batch {
                    Some(batch) => batch,
                    None => return,
                },
            };
            if !self.deliver(worker, batch).await {
                return;
            }
        }
    }

    /// Leases and sends one batch and settles each chunk; false when this worker must stop
    /// (the agent is draining or was dropped).
    async fn deliver(&self, worker: u32, batch: Batch) -> bool {
        let core = &self.core;
        let Batch {
            works: pulled,
            queues,
        } = batch;
        let mut works = Vec::with_capacity(pulled.len());
        let mut chunks = Vec::with_capacity(pulled.len());
        for work in pulled {
            if work.job.mark_dispatched() {
                core.jobs
                    .moved(Some(JobState::Queued), Some(JobState::Running));
            }
            if work.job.is_cancelled() {
                core.skip_cancelled(&work);
                continue;
            }
            match work.job.chunk(&work.spec, core.config.collapse_duplicates) {
                Some(mut chunk) => {
                    chunk.epoch = work.epoch;
                    chunks.push(chunk);
                    works.push(work);
                }
                None => {
                    tracing::error!(job = %work.job.id, "chunk has no rendering for its platform");
                    core.fail_chunk(&work, "bad_request", "NoRendering");
                }
            }
        }
        if works.is_empty() {
            core.scheduler.done(self.agent, &queues);
            return true;
        }
        let count = works.len() as u64;
        // Counted as out before the lease is written: a draining controller waits for these
        // chunks from here on, and closes its store only after them.
        self.counters.in_flight.fetch_add(count, Ordering::Relaxed);
        core.out.fetch_add(count, Ordering::Relaxed);
        let leased = core.leases.lease(&core.store, self.agent, &works).await;
        let lost = match leased {
            Ok(lost) if !core.draining.is_cancelled() => {
                core.metrics.chunks_leased.inc_by(count);
                lost
            }
            outcome => {
                // Never sent: without a lease on disk a resend after a crash could not be
                // counted as a possible duplicate, and a draining controller hands out nothing
                // new. The chunks go back as they were.
                if let Err(error) = &outcome {
                    tracing::error!(%error, chunks = works.len(), "cannot record the leases; chunks not sent");
                }
                core.leases.release(&works);
                self.counters.in_flight.fetch_sub(count, Ordering::Relaxed);
                core.out.fetch_sub(count, Ordering::Relaxed);
                for work in works {
                    core.hand_back(work, None);
                }
                core.scheduler.done(self.agent, &queues);
                if core.draining.is_cancelled() {
                    return false;
                }
                // A failing store: do not spin on the same chunks.
                tokio::time::sleep(STORE_RETRY).await;
                return true;
            }
        };
        // A job cancelled while the leases were written: its chunks do not go out. Checked
        // last before the call, so no chunk starts after a cancel has answered.
        let (works, chunks) = if works.iter().any(|work| work.job.is_cancelled()) {
            let (sending, cancelled): (Vec<_>, Vec<_>) = works
                .into_iter()
                .zip(chunks)
                .partition(|(work, _)| !work.job.is_cancelled());
            let cancelled: Vec<Work> = cancelled.into_iter().map(|(work, _)| work).collect();
            let skipped = cancelled.len() as u64;
            core.leases.release(&cancelled);
            self.counters
                .in_flight
                .fetch_sub(skipped, Ordering::Relaxed);
            core.out.fetch_sub(skipped, Ordering::Relaxed);
            for work in &cancelled {
                core.skip_cancelled(work);
            }
            if sending.is_empty() {
                core.scheduler.done(self.agent, &queues);
                return true;
            }
            sending.into_iter().unzip()
        } else {
            (works, chunks)
        };
        let count = works.len() as u64;
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + core.config.chunk_timeout;
        let sent = Instant::now();
        let every = |why: HandBack| works.iter().map(|_| Err(why)).collect::<Vec<_>>();
        let results: Vec<Result<ChunkAnswer, HandBack>> = tokio::select! {
            () = self.stop.cancelled() => every(HandBack::AgentDropped),
            // One lease of the batch is gone (they expire together): the whole call is
            // abandoned and every chunk handed out again.
            () = lost.cancelled() => every(HandBack::LeaseExpired),
            result = self.client.deliver(context, chunks) => match result {
                Ok(answers) if answers.len() == works.len() => answers
                    .into_iter()
                    .map(|answer| answer.map_err(|error| self.refusal(worker, &error)))
                    .collect(),
                Ok(answers) => {
                    tracing::error!(agent = %self.agent, chunks = works.len(), answers = answers.len(), "agent answered a batch with the wrong number of reports");
                    every(HandBack::CallFailed)
                }
                Err(error) => {
                    tracing::warn!(agent = %self.agent, worker, %error, "chunk call failed");
                    every(HandBack::CallFailed)
                }
            },
        };
        let took = sent.elapsed().as_millis() as u64;
        let leased: Vec<_> = works
            .iter()
            .map(|work| (work.chunk_id(), work.epoch))
            .collect();
        let mut keep_going = true;
        for (work, result) in works.into_iter().zip(results) {
            keep_going &= core.settle(self.agent, &self.counters, work, result, Some(took));
        }
        // The leases end after the settling: a heartbeat that finds a chunk unleased finds
        // its report queued for the store (and commits it before releasing the agent's copy),
        // and a draining controller closes its store only after these reports.
        core.leases.release_chunks(&leased);
        self.counters.in_flight.fetch_sub(count, Ordering::Relaxed);
        core.out.fetch_sub(count, Ordering::Relaxed);
        // After the settling: a pause an answer set is in place before the slot frees.
        core.scheduler.done(self.agent, &queues);
        keep_going
    }

    /// Reads an agent's refusal of one chunk; logs the unexpected ones.
    fn refusal(&self, worker: u32, error: &WireError) -> HandBack {
        let why = HandBack::of(error);
        if matches!(why, HandBack::Refused | HandBack::Invalid) {
            tracing::warn!(agent = %self.agent, worker, code = ?error.code, %error, "agent refused a chunk");
        }
        why
    }
}

impl Core {
    /// Records a chunk's report, or hands it back to its queue; false when the agent's
    /// dispatcher must stop. For the chunks of a `deliver` call, and for those adopted after a
    /// restart, whose outcomes come in `report` calls.
    ///
    /// A report always counts: whoever settles holds the chunk's only hand-out (a chunk goes
    /// out again only through the worker that gave up on it, or the adoption's watcher), so
    /// even a report that won the race with its lease's expiry is for the live epoch, and
    /// dropping it would leave the chunk unfinished with nobody to send it.
    pub(crate) fn settle(
        &self,
        agent: AgentId,
        counters: &AgentCounters,
        work: Work,
        result: Result<ChunkAnswer, HandBack>,
        took_ms: Option<u64>,
    ) -> bool {
        let core = self;
        let why = match result {
            Ok(answer) => {
                core.answered(agent, counters, work, answer, took_ms);
                return true;
            }
            Err(why) => why,
        };
        let epoch = work.epoch;
        let retry = Work {
            epoch: epoch + 1,
            ..work
        };
        match why {
            HandBack::Paused { retry_after } => {
                // Nothing was sent. The chunk waits at the head of its own queue; this agent
                // is not offered the app's chunks until its circuit may have closed, and other
                // apps' chunks take its slots meanwhile.
                tracing::debug!(agent = %agent, job = %retry.job.id, chunk = retry.spec.index, app = %retry.job.app, ?retry_after, "app paused on the agent; chunk back in its queue");
                let until = tokio::time::Instant::now() + retry_after;
                core.hand_back(retry, Some((agent, until)));
                true
            }
            HandBack::NoCredentials => {
                core.scheduler
                    .withdraw(agent, &retry.job.app, retry.spec.platform);
                core.hand_back(retry, None);
                true
            }
            HandBack::Invalid => {
                core.fail_chunk(&retry, "bad_request", "RefusedByAgent");
                true
            }
            HandBack::Refused => {
                let until = tokio::time::Instant::now() + REFUSAL_PAUSE;
                core.hand_back(retry, Some((agent, until)));
                true
            }
            HandBack::Draining => {
                // The agent finishes what it holds and leaves; this worker stops taking
                // chunks for it.
                core.hand_back(retry, None);
                false
            }
            HandBack::AgentDropped | HandBack::LeaseExpired | HandBack::CallFailed => {
                // Some of it may have been sent: every token counts as a possible duplicate
                // when it goes out again. A cancelled job's chunk does not: it is counted
                // cancelled, although some of it may have reached devices.
                if !retry.job.is_cancelled() {
                    tracing::warn!(agent = %agent, job = %retry.job.id, chunk = retry.spec.index, epoch, why = why.as_str(), "handing the chunk to another agent");
                    let count = retry.spec.outgoing() as u64;
                    retry.job.note_redispatch(&retry.spec);
                    core.store.write_later(Write::Duplicates {
                        id: retry.job.id,
                        count,
                    });
                    core.metrics.chunks_redispatched.inc();
                }
                core.hand_back(retry, None);
                if why == HandBack::LeaseExpired {
                    return true;
                }
                core.drop_agent(agent, why.as_str());
                false
            }
        }
    }
}

impl Core {
    /// Records an agent's answer for a chunk, or, when it handed back part of it, keeps what
    /// it reported and puts the rest back at the head of the chunk's queue.
    fn answered(
        &self,
        agent: AgentId,
        counters: &AgentCounters,
        work: Work,
        answer: ChunkAnswer,
        took_ms: Option<u64>,
    ) {
        let ChunkAnswer {
            report,
            mut returned,
            pause,
            positions,
        } = answer;
        let len = work.spec.len();
        // A part this controller did not hand out: it adopted the chunk after a restart, and
        // the report of the positions the answer does not cover was lost with its
        // predecessor (as were the possible duplicates it counted). They go out again, and
        // every token of the chunk counts as a possible duplicate.
        let mut lost = 0;
        if work.spec.part.is_none() && !positions.is_empty() {
            let mut covered = vec![false; len];
            for &position in &positions {
                if let Some(covered) = covered.get_mut(position as usize) {
                    *covered = true;
                }
            }
            returned.extend((0..len as u32).filter(|&position| !covered[position as usize]));
            returned.sort_unstable();
            lost = len as u64;
        }
        returned.retain(|&position| (position as usize) < len);
        if returned.is_empty() {
            counters.chunks_done.fetch_add(1, Ordering::Relaxed);
            self.record(&work, &report, took_ms);
            return;
        }
        let job = work.job;
        if lost > 0 {
            tracing::warn!(agent = %agent, job = %job.id, chunk = work.spec.index, "an adopted part's other tokens go out again");
            self.count_lost_part(&job, lost);
        }
        tracing::info!(agent = %agent, job = %job.id, chunk = work.spec.index, returned = returned.len(), tokens = len, ?pause, "the agent handed back the unsent rest of a chunk; it goes to another agent");
        let (done, hand_backs) = match &work.spec.part {
            Some(part) => (merged(&part.done, &report), part.hand_backs + 1),
            None => (report, 1),
        };
        let retry = Work {
            job,
            spec: ChunkSpec {
                part: Some(Arc::new(Part {
                    hand_backs,
                    positions: returned,
                    done,
                })),
                ..work.spec
            },
            epoch: work.epoch + 1,
        };
        let pause =
            (!pause.is_zero()).then(|| (agent, tokio::time::Instant::now() + pause.min(MAX_PAUSE)));
        self.hand_back(retry, pause);
    }

    /// Counts `tokens` of an adopted part's chunk as possible duplicates: the report of the
    /// rest of the chunk was lost with the controller that handed the part out, and the
    /// whole chunk may go out again.
    pub(crate) fn count_lost_part(&self, job: &crate::job::Job, tokens: u64) {
        if job.is_cancelled() {
            return;
        }
        job.note_duplicates(tokens);
        self.store.write_later(Write::Duplicates {
            id: job.id,
            count: tokens,
        });
    }
}

/// A report in which every notification of a chunk failed with `class` and `reason`.
pub(crate) fn failed_report(
    positions: impl Iterator<Item = u32>,
    class: &str,
    reason: &str,
) -> ChunkReport {
    ChunkReport {
        failed: positions
            .map(|index| ChunkFailure {
                index,
                class: class.into(),
                reason: reason.into(),
            })
            .collect(),
        ..ChunkReport::default()
    }
}
