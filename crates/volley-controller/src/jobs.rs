//! The job table: every job the controller knows, its idempotency keys, and the finished jobs
//! kept for their retention (at most `controller.max_finished_jobs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use volley_contracts::{ErrorCode, JobId, WireError};

use crate::clock::now_ms;
use crate::job::Job;

/// Jobs by id, keys, and the finished jobs kept.
#[derive(Debug)]
pub(crate) struct JobTable {
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    /// key → (job, accepted at ms).
    idempotency: Mutex<HashMap<String, (JobId, u64)>>,
    /// Finished jobs still kept, oldest first, with when they finished.
    finished: Mutex<VecDeque<(JobId, u64)>>,
    /// Jobs not final yet.
    active: AtomicU64,
    max_finished: usize,
    /// When finished jobs were last forgotten before their retention (for a rate-limited
    /// warning), ms since the epoch.
    early_forget_warned: AtomicU64,
}

/// Jobs to forget in the store: their ids and the keys that named them.
pub(crate) type Forgotten = (Vec<JobId>, Vec<String>);

impl JobTable {
    pub(crate) fn new(keys: HashMap<String, (JobId, u64)>, max_finished: usize) -> JobTable {
        JobTable {
            jobs: Mutex::default(),
            idempotency: Mutex::new(keys),
            finished: Mutex::default(),
            active: AtomicU64::new(0),
            max_finished,
            early_forget_warned: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self, id: JobId) -> Result<Arc<Job>, WireError> {
        self.jobs
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    /// The job `key` names, if it was given within `window_ms` and the job is known.
    pub(crate) fn by_key(&self, key: &str, now: u64, window_ms: u64) -> Option<Arc<Job>> {
        let known = self.idempotency.lock().get(key).copied();
        let (id, at) = known?;
        if now.saturating_sub(at) >= window_ms {
            return None;
        }
        self.get(id).ok()
    }

    /// Makes a job known; counts it active unless it is already final.
    pub(crate) fn insert(&self, job: Arc<Job>) {
        if !job.is_finished() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
        self.jobs.lock().insert(job.id, job);
    }

    /// Makes `key` name a new job, accepted at `at_ms`.
    pub(crate) fn remember_key(&self, key: &str, id: JobId, at_ms: u64) {
        self.idempotency.lock().insert(key.to_owned(), (id, at_ms));
    }

    /// Jobs not final yet.
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Adds finished jobs read back at start-up to those kept.
    pub(crate) fn restore_finished(&self, mut finished: Vec<(JobId, u64)>) -> Forgotten {
        finished.sort_by_key(|(id, at)| (*at, *id));
        self.finished.lock().extend(finished);
        self.keep_finished(None)
    }

    /// A job became final: it joins the finished jobs kept. Returns what to forget.
    pub(crate) fn finished(&self, id: JobId, at_ms: u64) -> Forgotten {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.keep_finished(Some((id, at_ms)))
    }

    /// Keeps at most `controller.max_finished_jobs`: once that is passed by 1% the oldest are
    /// forgotten, in one batch (one store write) rather than one by one.
    fn keep_finished(&self, finished: Option<(JobId, u64)>) -> Forgotten {
        let max = self.max_finished;
        let evicted: Vec<JobId> = {
            let mut kept = self.finished.lock();
            kept.extend(finished);
            if kept.len() <= max + (max / 100).max(1) {
                return Default::default();
            }
            let excess = kept.len() - max;
            kept.drain(..excess).map(|(id, _)| id).collect()
        };
        let now = now_ms();
        let last = self.early_forget_warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .early_forget_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                jobs = evicted.len(),
                max_finished_jobs = max,
                "finished jobs forgotten before controller.job_retention: more than \
                 controller.max_finished_jobs are finished within it"
            );
        }
        self.forget(evicted)
    }

    /// Finished jobs that ended at or before `horizon_ms`, taken out of those kept.
    pub(crate) fn expire(&self, horizon_ms: u64) -> Forgotten {
        let expired: Vec<JobId> = {
            let mut finished = self.finished.lock();
            let due = finished
                .iter()
                .take_while(|(_, at)| *at <= horizon_ms)
                .count();
            finished.drain(..due).map(|(id, _)| id).collect()
        };
        if !expired.is_empty() {
            tracing::info!(
                jobs = expired.len(),
                "finished jobs past their retention forgotten"
            );
        }
        self.forget(expired)
    }

    /// Forgets finished jobs: their status and their idempotency keys.
    fn forget(&self, ids: Vec<JobId>) -> Forgotten {
        if ids.is_empty() {
            return Default::default();
        }
        let mut keys = Vec::new();
        {
            let mut jobs = self.jobs.lock();
            let mut idempotency = self.idempotency.lock();
            for id in &ids {
                let Some(job) = jobs.remove(id) else { continue };
                if let Some(key) = &job.idempotency_key {
                    // Only if the key still names this job.
                    if idempotency.get(key).is_some_and(|(known, _)| known == id) {
                        idempotency.remove(key);
                        keys.push(key.clone());
                    }
                }
            }
        }
        tracing::debug!(jobs = ids.len(), "finished jobs forgotten");
        (ids, keys)
    }
}
