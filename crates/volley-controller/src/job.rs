//! A job held by the controller: its tokens, its rendered notification and its progress.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::clock::now_ms;
use crate::store::{CancelMark, StoredJob};
use parking_lot::Mutex;
use volley_contracts::{
    ApnsRender, Chunk, ChunkId, ChunkReport, FailureCount, FcmRender, InvalidToken,
    InvalidTokenPage, JobId, JobState, JobStatus, Platform, Render, SubmitJob, TokenList,
    WebPushRender,
};

/// One chunk's place in its job: which tokens of which platform.
#[derive(Debug, Clone)]
pub(crate) struct ChunkSpec {
    pub(crate) index: u32,
    pub(crate) platform: Platform,
    pub(crate) range: Range<usize>,
    /// Set when only part of the chunk is still to send: an agent handed back the rest of
    /// it when its circuit opened part-way (`ChunkAnswer::returned`).
    pub(crate) part: Option<Arc<Part>>,
}

/// How many times a chunk's rest may be handed back before its last part must end where it
/// goes (`Chunk::hand_back` false): a part's notifications do not go round agents whose
/// circuits open on them in turn, each giving them a fresh retry budget.
pub(crate) const MAX_HAND_BACKS: u32 = 3;

/// What is left of a chunk that went out in part.
#[derive(Debug)]
pub(crate) struct Part {
    /// How many times agents handed back the rest of this chunk.
    pub(crate) hand_backs: u32,
    /// The positions (within the chunk) still to send, ascending.
    pub(crate) positions: Vec<u32>,
    /// What became of the others, in chunk positions. Held in memory only: the chunk's
    /// report goes to the store once, whole. A controller that stops before then sends the
    /// whole chunk again, its tokens counted as possible duplicates (orphans.rs).
    pub(crate) done: ChunkReport,
}

impl ChunkSpec {
    /// The chunk's tokens.
    pub(crate) fn len(&self) -> usize {
        self.range.len()
    }

    /// The tokens that go out when the chunk is handed out: all, or what is left of a part.
    pub(crate) fn outgoing(&self) -> usize {
        self.part
            .as_ref()
            .map_or(self.range.len(), |part| part.positions.len())
    }

    /// The positions (within the chunk) of the tokens that go out, ascending.
    pub(crate) fn outgoing_positions(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        match &self.part {
            Some(part) => Box::new(part.positions.iter().copied()),
            None => Box::new(0..self.range.len() as u32),
        }
    }
}

/// A job in memory.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) id: JobId,
    pub(crate) app: String,
    pub(crate) created_ms: u64,
    pub(crate) accepted: u64,
    /// The caller's key (scoped to `app`), forgotten with the job.
    pub(crate) idempotency_key: Option<String>,
    /// Tokens the front refused as malformed, reported by the status.
    rejected: volley_contracts::Rejected,
    apns: Option<ApnsRender>,
    fcm: Option<FcmRender>,
    webpush: Option<WebPushRender>,
    apns_tokens: TokenList,
    fcm_tokens: TokenList,
    webpush_tokens: TokenList,
    pub(crate) chunks_total: u32,
    /// Set (under the progress lock, while the job is unfinished) by a cancel; read without
    /// the lock by the dispatchers before a chunk goes out.
    cancelled: AtomicBool,
    progress: Mutex<Progress>,
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// The job is cancelled from now on.
    Now,
    /// It was cancelled already.
    Already,
    /// It had finished: a cancel changes nothing.
    Finished,
}

#[derive(Debug, Default)]
struct Progress {
    delivered: u64,
    failed: u64,
    invalid: u64,
    cancelled: u64,
    possible_duplicates: u64,
    chunks_done: u32,
    /// Which chunks have a final report: a chunk handed out twice (its first agent was lost)
    /// counts once.
    done: Vec<bool>,
    dispatched: bool,
    invalid_tokens: Vec<InvalidToken>,
    failures: HashMap<(Platform, String, String), u64>,
    finished_ms: Option<u64>,
    /// Notifications without a final outcome, per platform.
    unfinished: [u64; Platform::ALL.len()],
}

/// A restored job's chunks without a report, as the store left them.
#[derive(Debug, Default)]
pub(crate) struct Unfinished {
    /// Never handed out (epoch 0), or handed back in memory only: they go to their queue.
    pub(crate) queued: Vec<(ChunkSpec, u32)>,
    /// Leased when the controller stopped, with that lease's epoch: they may still be out
    /// with the agent that held them, which may claim them.
    pub(crate) leased: Vec<(ChunkSpec, u32)>,
}

impl Unfinished {
    /// How many notifications they hold.
    pub(crate) fn tokens(&self) -> u64 {
        self.queued
            .iter()
            .chain(&self.leased)
            .map(|(spec, _)| spec.len() as u64)
            .sum()
    }

    /// Every unfinished chunk, queued or leased.
    pub(crate) fn all(self) -> impl Iterator<Item = (ChunkSpec, u32)> {
        self.queued.into_iter().chain(self.leased)
    }
}

/// What a chunk's report added to the app's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChunkTotals {
    pub(crate) success: u64,
    pub(crate) error: u64,
    pub(crate) finished_job: bool,
    /// Where this chunk's invalid tokens start in the job's list.
    pub(crate) invalid_start: usize,
}

impl Job {
    pub(crate) fn new(
        id: JobId,
        submit: SubmitJob,
        chunk_size: usize,
        created_ms: u64,
    ) -> (Job, Vec<ChunkSpec>) {
        let mut specs = Vec::new();
        for platform in Platform::ALL {
            let tokens = submit.tokens(platform);
            let mut start = 0;
            while start < tokens.len() {
                let end = (start + chunk_size).min(tokens.len());
                specs.push(ChunkSpec {
                    index: specs.len() as u32,
                    platform,
                    range: start..end,
                    part: None,
                });
                start = end;
            }
        }
        let unfinished = Platform::ALL.map(|platform| submit.tokens(platform).len() as u64);
        let accepted = submit.len() as u64;
        let job = Job {
            id,
            app: submit.app,
            created_ms,
            accepted,
            idempotency_key: submit.idempotency_key.map(|key| key.key),
            rejected: submit.rejected,
            apns: submit.apns,
            fcm: submit.fcm,
            webpush: submit.webpush,
            apns_tokens: submit.apns_tokens,
            fcm_tokens: submit.fcm_tokens,
            webpush_tokens: submit.webpush_tokens,
            chunks_total: specs.len() as u32,
            cancelled: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                done: vec![false; specs.len()],
                unfinished,
                ..Progress::default()
            }),
        };
        (job, specs)
    }

    /// Rebuilds a job read back from the store; returns it with its chunks still unfinished:
    /// those to queue, and those that were leased when the controller stopped.
    pub(crate) fn restore(stored: StoredJob) -> (Job, Unfinished) {
        let StoredJob {
            id,
            record,
            done,
            leased,
            last_done_ms,
            cancelled,
            possible_duplicates,
        } = stored;
        let (job, specs) = Job::new(
            id,
            record.submit,
            record.chunk_size as usize,
            record.created_ms,
        );
        if cancelled != CancelMark::None {
            job.cancelled.store(true, Ordering::SeqCst);
        }
        for (index, report) in &done {
            if let Some(spec) = specs.get(*index as usize) {
                job.apply_report(spec, report);
            }
        }
        let mut progress = job.progress.lock();
        if cancelled == CancelMark::Legacy
            && progress.finished_ms.is_some()
            && progress.cancelled == 0
        {
            // Marked by a cancel that came after the job had finished: it was done, and
            // stays so.
            job.cancelled.store(false, Ordering::SeqCst);
        }
        progress.possible_duplicates += possible_duplicates;
        progress.dispatched = !done.is_empty() || !leased.is_empty();
        if progress.finished_ms.is_some() {
            // Every chunk is done: the job ended with its last chunk, not now.
            progress.finished_ms = last_done_ms.or(progress.finished_ms);
        }
        let mut unfinished = Unfinished::default();
        for spec in specs {
            if progress.done[spec.index as usize] {
                continue;
            }
            match leased.get(&spec.index) {
                // It was out with an agent when the controller stopped: that agent may still
                // be sending it, and claim it. Counted a possible duplicate only if it goes
                // out again, unclaimed.
                Some(epoch) => unfinished.leased.push((spec, *epoch)),
                None => unfinished.queued.push((spec, 0)),
            }
        }
        drop(progress);
        (job, unfinished)
    }

    fn tokens(&self, platform: Platform) -> &TokenList {
        match platform {
            Platform::Apns => &self.apns_tokens,
            Platform::Fcm => &self.fcm_tokens,
            Platform::WebPush => &self.webpush_tokens,
        }
    }

    /// The chunk to hand to an agent; its tokens share the job's buffer. With
    /// `collapse_duplicates`, a broadcast's APNs chunks carry the job id as their
    /// `apns-collapse-id`. FCM chunks never do: a collapsible FCM message is throttled per
    /// device and only the last four are kept for an offline device (ADR 003).
    pub(crate) fn chunk(&self, spec: &ChunkSpec, collapse_duplicates: bool) -> Option<Chunk> {
        let render = match spec.platform {
            Platform::Apns => Render::Apns(self.apns.clone()?),
            Platform::Fcm => Render::Fcm(self.fcm.clone()?),
            Platform::WebPush => Render::WebPush(self.webpush.clone()?),
        };
        Some(Chunk {
            id: ChunkId {
                job: self.id,
                index: spec.index,
            },
            epoch: 0,
            app: self.app.clone(),
            render,
            tokens: self.outgoing_tokens(spec),
            positions: spec
                .part
                .as_ref()
                .map(|part| part.positions.clone())
                .unwrap_or_default(),
            hand_back: spec
                .part
                .as_ref()
                .is_none_or(|part| part.hand_backs < MAX_HAND_BACKS),
            collapse_id: (collapse_duplicates
                && self.accepted > 1
                && spec.platform == Platform::Apns)
                .then(|| self.id.to_string()),
        })
    }

    /// The tokens of the chunk that go out: a slice of the job's buffer, or for a part (rare:
    /// an agent handed back the rest of a chunk) a copy of what is left.
    fn outgoing_tokens(&self, spec: &ChunkSpec) -> TokenList {
        let tokens = self.tokens(spec.platform).slice(spec.range.clone());
        let Some(part) = &spec.part else {
            return tokens;
        };
        let mut left = volley_contracts::TokenListBuilder::with_capacity(
            part.positions.len(),
            tokens.byte_len(),
        );
        for &position in &part.positions {
            left.push(tokens.get(position as usize).unwrap_or_default());
        }
        left.finish()
    }

    /// Whether the job is cancelled: none of its chunks may go out any more.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Cancels the job unless it has finished (checked under the lock its last report takes,
    /// so a job is never marked cancelled after it was done).
    pub(crate) fn cancel(&self) -> Cancel {
        let progress = self.progress.lock();
        if progress.finished_ms.is_some() {
            return Cancel::Finished;
        }
        if self.cancelled.swap(true, Ordering::SeqCst) {
            return Cancel::Already;
        }
        Cancel::Now
    }

    /// Notes that a chunk of the job goes out; `true` when this moved the job from
    /// `queued` to `running`.
    pub(crate) fn mark_dispatched(&self) -> bool {
        let mut progress = self.progress.lock();
        // A cancelled job stays `cancelling` whatever goes out: not marked, so that a cancel's
        // move is counted from the state the job was in.
        let moved = !progress.dispatched && progress.finished_ms.is_none() && !self.is_cancelled();
        progress.dispatched |= moved;
        moved
    }

    /// Whether a chunk of the job went out before it was cancelled or finished.
    pub(crate) fn was_dispatched(&self) -> bool {
        self.progress.lock().dispatched
    }

    /// The state the job is or was in before it became final: `cancelling`, `running` or
    /// `queued` (what the job table counts it as while it is not final).
    pub(crate) fn live_state(&self) -> JobState {
        let progress = self.progress.lock();
        if self.is_cancelled() {
            JobState::Cancelling
        } else if progress.dispatched {
            JobState::Running
        } else {
            JobState::Queued
        }
    }

    /// The platforms some of whose notifications have no final outcome yet.
    pub(crate) fn unfinished_platforms(&self) -> Vec<Platform> {
        let progress = self.progress.lock();
        Platform::ALL
            .into_iter()
            .filter(|platform| progress.unfinished[platform.index()] > 0)
            .collect()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.progress.lock().finished_ms.is_some()
    }

    pub(crate) fn finished_ms(&self) -> Option<u64> {
        self.progress.lock().finished_ms
    }

    /// Records an agent's report for one chunk; `None` when the chunk was already done.
    pub(crate) fn apply_report(
        &self,
        spec: &ChunkSpec,
        report: &ChunkReport,
    ) -> Option<ChunkTotals> {
        let tokens = self.tokens(spec.platform);
        let mut progress = self.progress.lock();
        let done = progress.done.get_mut(spec.index as usize)?;
        if *done {
            return None;
        }
        *done = true;
        let unfinished = &mut progress.unfinished[spec.platform.index()];
        *unfinished = unfinished.saturating_sub(spec.len() as u64);
        progress.delivered += u64::from(report.delivered);
        progress.invalid += report.invalid.len() as u64;
        progress.failed += report.failed.len() as u64;
        progress.possible_duplicates += u64::from(report.possible_duplicates);
        progress.cancelled += u64::from(report.cancelled);
        let invalid_start = progress.invalid_tokens.len();
        for (index, reason, timestamp_ms) in &report.invalid {
            let token = tokens
                .get(spec.range.start + *index as usize)
                .map(|token| spec.platform.reported_token(token))
                .unwrap_or_default()
                .to_owned();
            progress.invalid_tokens.push(InvalidToken {
                platform: spec.platform,
                token,
                reason: reason.clone(),
                timestamp_ms: *timestamp_ms,
            });
        }
        for failure in &report.failed {
            *progress
                .failures
                .entry((spec.platform, failure.class.clone(), failure.reason.clone()))
                .or_default() += 1;
        }
        let error = (report.invalid.len() + report.failed.len()) as u64;
        Some(ChunkTotals {
            success: u64::from(report.delivered),
            error,
            finished_job: self.finish_chunk(&mut progress),
            invalid_start,
        })
    }

    /// `count` invalid tokens from position `start` of the job's list.
    pub(crate) fn invalid_slice(&self, start: usize, count: usize) -> Vec<InvalidToken> {
        let progress = self.progress.lock();
        let end = (start + count).min(progress.invalid_tokens.len());
        progress
            .invalid_tokens
            .get(start.min(end)..end)
            .map(<[InvalidToken]>::to_vec)
            .unwrap_or_default()
    }

    /// A page of the job's invalid tokens, in the order the reports arrived.
    pub(crate) fn invalid_page(&self, offset: u64, limit: u32) -> InvalidTokenPage {
        let progress = self.progress.lock();
        let total = progress.invalid_tokens.len() as u64;
        let start = offset.min(total) as usize;
        let end = (start + limit as usize).min(progress.invalid_tokens.len());
        let tokens = progress.invalid_tokens[start..end].to_vec();
        let end = end as u64;
        InvalidTokenPage {
            app: self.app.clone(),
            total,
            next: (end < total).then_some(end),
            tokens,
        }
    }

    /// Records that a chunk is going out again after its agent was lost mid-chunk.
    pub(crate) fn note_redispatch(&self, spec: &ChunkSpec) {
        // Every token that went out may already have been sent once.
        self.note_duplicates(spec.outgoing() as u64);
    }

    /// Counts notifications that may be sent twice.
    pub(crate) fn note_duplicates(&self, count: u64) {
        self.progress.lock().possible_duplicates += count;
    }

    fn finish_chunk(&self, progress: &mut Progress) -> bool {
        progress.chunks_done += 1;
        if progress.chunks_done == self.chunks_total && progress.finished_ms.is_none() {
            progress.finished_ms = Some(now_ms());
            return true;
        }
        false
    }

    /// Notifications without a final outcome.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> u64 {
        let progress = self.progress.lock();
        self.accepted
            - (progress.delivered + progress.failed + progress.invalid + progress.cancelled)
                .min(self.accepted)
    }

    pub(crate) fn status(&self, invalid_limit: usize) -> JobStatus {
        let progress = self.progress.lock();
        let done = progress.delivered + progress.failed + progress.invalid + progress.cancelled;
        let state = if progress.finished_ms.is_some() {
            if self.is_cancelled() {
                JobState::Cancelled
            } else {
                JobState::Done
            }
        } else if self.is_cancelled() {
            JobState::Cancelling
        } else if progress.dispatched {
            JobState::Running
        } else {
            JobState::Queued
        };
        let mut failures: Vec<FailureCount> = progress
            .failures
            .iter()
            .map(|((platform, class, reason), count)| FailureCount {
                platform: *platform,
                class: class.clone(),
                reason: reason.clone(),
                count: *count,
            })
            .collect();
        failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        JobStatus {
            id: self.id,
            app: self.app.clone(),
            state,
            accepted: self.accepted,
            delivered: progress.delivered,
            failed: progress.failed,
            invalid: progress.invalid,
            cancelled: progress.cancelled,
            pending: self.accepted.saturating_sub(done),
            possible_duplicates: progress.possible_duplicates,
            invalid_tokens: progress
                .invalid_tokens
                .iter()
                .take(invalid_limit)
                .cloned()
                .collect(),
            failures,
            created_ms: self.created_ms,
            finished_ms: progress.finished_ms,
            waiting: None,
            rejected: self.rejected.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_contracts::ChunkFailure;

    fn submit(apns: usize, fcm: usize) -> SubmitJob {
        SubmitJob {
            app: "shop".into(),
            apns: Some(ApnsRender {
                payload: bytes::Bytes::from_static(b"{\"aps\":{}}"),
                push_type: "alert".into(),
                priority: 10,
                expiration: None,
                collapse_id: None,
                topic: None,
                apns_id: None,
            }),
            fcm: Some(FcmRender {
                prefix: bytes::Bytes::from_static(b"{\"message\":{\"token\":\""),
                suffix: bytes::Bytes::from_static(b"\"}}"),
            }),
            apns_tokens: (0..apns).map(|i| format!("{i:064x}")).collect(),
            fcm_tokens: (0..fcm).map(|i| format!("fcm-{i}")).collect(),
            webpush: None,
            webpush_tokens: Default::default(),
            idempotency_key: None,
            rejected: Default::default(),
        }
    }

    #[test]
    fn a_job_splits_into_bounded_chunks_per_platform() {
        let (job, specs) = Job::new(JobId::new(), submit(2500, 1001), 1000, now_ms());
        let sizes: Vec<(Platform, usize)> = specs.iter().map(|s| (s.platform, s.len())).collect();
        assert_eq!(
            sizes,
            [
                (Platform::Apns, 1000),
                (Platform::Apns, 1000),
                (Platform::Apns, 500),
                (Platform::Fcm, 1000),
                (Platform::Fcm, 1)
            ]
        );
        assert_eq!(job.chunks_total, 5);
        let chunk = job.chunk(&specs[0], true).unwrap();
        assert_eq!(chunk.collapse_id, Some(job.id.to_string()));
        let chunk = job.chunk(&specs[4], true).unwrap();
        assert_eq!(
            chunk.collapse_id, None,
            "fcm broadcasts stay non-collapsible"
        );
        assert_eq!(chunk.tokens.get(0), Some("fcm-1000"));
        assert!(matches!(chunk.render, Render::Fcm(_)));
    }

    #[test]
    fn reports_add_up_and_finish_the_job() {
        let (job, specs) = Job::new(JobId::new(), submit(3, 0), 2, now_ms());
        job.apply_report(
            &specs[0],
            &ChunkReport {
                delivered: 1,
                invalid: vec![(1, "Unregistered".into(), Some(5))],
                ..ChunkReport::default()
            },
        );
        assert_eq!(job.pending(), 1);
        let totals = job.apply_report(
            &specs[1],
            &ChunkReport {
                failed: vec![ChunkFailure {
                    index: 0,
                    class: "transient".into(),
                    reason: "ServiceUnavailable".into(),
                }],
                ..ChunkReport::default()
            },
        );
        assert!(totals.unwrap().finished_job);
        // A second report for a done chunk (a redispatch race) is ignored.
        assert!(job
            .apply_report(&specs[1], &ChunkReport::default())
            .is_none());
        let status = job.status(10);
        assert_eq!(status.state, JobState::Done);
        assert_eq!(
            (
                status.delivered,
                status.invalid,
                status.failed,
                status.pending
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(status.invalid_tokens[0].token, format!("{:064x}", 1));
        assert_eq!(status.failures[0].reason, "ServiceUnavailable");
    }

    #[test]
    fn a_restored_job_ends_when_its_last_chunk_did_and_not_before() {
        let stored = |done: &[u32]| StoredJob {
            id: JobId::new(),
            record: crate::store::JobRecord {
                submit: submit(4, 0),
                chunk_size: 2,
                created_ms: 1,
            },
            done: done
                .iter()
                .map(|index| {
                    (
                        *index,
                        ChunkReport {
                            delivered: 2,
                            ..ChunkReport::default()
                        },
                    )
                })
                .collect(),
            leased: HashMap::new(),
            last_done_ms: Some(5),
            cancelled: CancelMark::None,
            possible_duplicates: 0,
        };
        let (half, pending) = Job::restore(stored(&[0]));
        assert_eq!(pending.queued.len(), 1);
        assert_eq!(
            half.finished_ms(),
            None,
            "one chunk of two is not the job's end"
        );
        let (whole, pending) = Job::restore(stored(&[0, 1]));
        assert_eq!(pending.tokens(), 0);
        assert_eq!(whole.finished_ms(), Some(5));
        assert_eq!(whole.status(0).state, JobState::Done);
    }

    fn delivered(tokens: u32) -> ChunkReport {
        ChunkReport {
            delivered: tokens,
            ..ChunkReport::default()
        }
    }

    #[test]
    fn a_cancel_is_cancelling_until_the_chunks_out_report_and_leaves_a_finished_job_alone() {
        let (job, specs) = Job::new(JobId::new(), submit(4, 0), 2, now_ms());
        job.mark_dispatched();
        assert_eq!(job.status(0).state, JobState::Running);
        assert_eq!(job.cancel(), Cancel::Now);
        assert_eq!(job.cancel(), Cancel::Already);
        // Chunk 0 was out: it reports what it sent; chunk 1 was queued: it is cancelled.
        job.apply_report(
            &specs[1],
            &ChunkReport {
                cancelled: 2,
                ..ChunkReport::default()
            },
        );
        let status = job.status(0);
        assert_eq!((status.state, status.pending), (JobState::Cancelling, 2));
        job.apply_report(&specs[0], &delivered(2));
        let status = job.status(0);
        assert_eq!(status.state, JobState::Cancelled);
        assert_eq!(
            (status.delivered, status.cancelled, status.pending),
            (2, 2, 0)
        );
        // Every chunk was out when the cancel came and delivered everything: still cancelled.
        let (job, specs) = Job::new(JobId::new(), submit(2, 0), 2, now_ms());
        assert_eq!(job.cancel(), Cancel::Now);
        job.apply_report(&specs[0], &delivered(2));
        assert_eq!(job.status(0).state, JobState::Cancelled);
        // A finished job stays done.
        let (job, specs) = Job::new(JobId::new(), submit(2, 0), 2, now_ms());
        job.apply_report(&specs[0], &delivered(2));
        assert_eq!(job.cancel(), Cancel::Finished);
        assert!(!job.is_cancelled());
        assert_eq!(job.status(0).state, JobState::Done);
    }

    #[test]
    fn restored_cancel_marks_read_as_they_were_shown() {
        let stored = |done: &[(u32, ChunkReport)], leased: &[u32], cancelled| StoredJob {
            id: JobId::new(),
            record: crate::store::JobRecord {
                submit: submit(4, 0),
                chunk_size: 2,
                created_ms: 1,
            },
            done: done.to_vec(),
            leased: leased.iter().map(|index| (*index, 0)).collect(),
            last_done_ms: Some(5),
            cancelled,
            possible_duplicates: 0,
        };
        let both_done = [(0, delivered(2)), (1, delivered(2))];
        // A first-layout mark on a job that finished without anything cancelled came after
        // its end: the job is done.
        let (job, _) = Job::restore(stored(&both_done, &[], CancelMark::Legacy));
        assert_eq!(job.status(0).state, JobState::Done);
        let (job, _) = Job::restore(stored(&both_done, &[], CancelMark::Cancelled));
        assert_eq!(job.status(0).state, JobState::Cancelled);
        // Unfinished: cancelling, its chunk out at the restart left to be counted cancelled,
        // not resent, so not a possible duplicate.
        for mark in [CancelMark::Legacy, CancelMark::Cancelled] {
            let (job, pending) = Job::restore(stored(&both_done[..1], &[1], mark));
            assert_eq!(pending.leased.len(), 1);
            let status = job.status(0);
            assert_eq!(status.state, JobState::Cancelling);
            assert_eq!(status.possible_duplicates, 0);
        }
        // Not cancelled: the chunk out at the restart waits for its agent's claim with the
        // epoch it was leased with; it is not a possible duplicate unless it goes out again.
        let (job, pending) = Job::restore(stored(&both_done[..1], &[1], CancelMark::None));
        assert_eq!(pending.leased.len(), 1);
        assert_eq!(pending.leased[0].1, 0);
        let status = job.status(0);
        assert_eq!((status.state, status.pending), (JobState::Running, 2));
        assert_eq!(status.possible_duplicates, 0);
    }
}
