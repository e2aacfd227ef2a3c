//! The job table: every job the controller knows, its idempotency keys, and the finished jobs
//! kept for their retention (at most `controller.max_finished_jobs`).
//!
//! An idempotency key belongs to an app. A submission claims its key before it goes to the
//! store, in one step under the keys' lock: a second submission with the key while the first
//! is on its way is refused as in use (`409`), never made a second job; once the first is
//! committed, a repeat with the same fingerprint is answered with its job, and one with
//! another fingerprint is refused as a reused key (`422`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use volley_contracts::{
    ErrorCode, Fingerprint, IdempotencyKey, JobAccepted, JobId, JobState, WireError,
};

use crate::clock::now_ms;
use crate::job::Job;
use crate::store::{KeyRecord, StoredKey};

/// Where an app's idempotency key stands.
#[derive(Debug, Clone, Copy)]
enum KeyState {
    /// Claimed by a submission on its way to the store.
    Claimed { fingerprint: Option<Fingerprint> },
    /// It names a stored job.
    Known(KeyRecord),
}

/// Keys by app, then by key: looked up with borrowed names, without building a pair.
type Keys = HashMap<String, HashMap<String, KeyState>>;

/// What a submission's key lets it do.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The key is the submission's now: make the job, then [`JobTable::commit_key`] or
    /// [`JobTable::release_key`].
    Fresh,
    /// A repeat of a stored job: answer with it.
    Replay(JobAccepted),
}

/// Jobs by id, keys, and the finished jobs kept.
#[derive(Debug)]
pub(crate) struct JobTable {
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    /// The jobs not final yet (also in `jobs`): the dashboard lists them without a walk over
    /// the finished jobs kept.
    /// Keyed by id: ids are UUIDv7s, so the map is in creation order and the newest are at its
    /// end.
    unfinished: Mutex<BTreeMap<JobId, Arc<Job>>>,
    /// Idempotency keys by app.
    idempotency: Mutex<Keys>,
    /// Finished jobs still kept, oldest first, with when they finished.
    finished: Mutex<VecDeque<(JobId, u64)>>,
    /// Jobs not final yet by state (`queued`, `running`, `cancelling`), moved as they move.
    /// Signed: a move may be counted just before the job's arrival in its state is.
    by_state: [AtomicI64; LIVE_STATES.len()],
    max_finished: usize,
    /// When finished jobs were last forgotten before their retention (for a rate-limited
    /// warning), ms since the epoch.
    early_forget_warned: AtomicU64,
}

/// The states of a job not final yet, in the order of [`JobTable::by_state`].
pub(crate) const LIVE_STATES: [JobState; 3] =
    [JobState::Queued, JobState::Running, JobState::Cancelling];

fn live_slot(state: JobState) -> Option<usize> {
    LIVE_STATES.iter().position(|live| *live == state)
}

/// Jobs to forget in the store: their ids and the (app, key) pairs that named them.
pub(crate) type Forgotten = (Vec<JobId>, Vec<(String, String)>);

impl JobTable {
    pub(crate) fn new(stored: Vec<StoredKey>, max_finished: usize) -> JobTable {
        let mut keys = Keys::new();
        for StoredKey { app, key, record } in stored {
            keys.entry(app)
                .or_default()
                .insert(key, KeyState::Known(record));
        }
        JobTable {
            jobs: Mutex::default(),
            unfinished: Mutex::default(),
            idempotency: Mutex::new(keys),
            finished: Mutex::default(),
            by_state: Default::default(),
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

    /// Claims `app`'s `key` for a new submission, or answers a repeat: with the job the key
    /// names when it was first used within `window_ms` for the same request; refused when
    /// it names another request, or one still on its way to the store.
    pub(crate) fn claim_key(
        &self,
        app: &str,
        key: &IdempotencyKey,
        now: u64,
        window_ms: u64,
    ) -> Result<Claim, WireError> {
        let mut keys = self.idempotency.lock();
        match keys.get(app).and_then(|keys| keys.get(&key.key)) {
            Some(KeyState::Claimed { fingerprint }) => {
                return Err(if key.same_request(fingerprint.as_ref()) {
                    WireError::new(
                        ErrorCode::IdempotencyKeyInUse,
                        "a request with this Idempotency-Key is still being accepted; retry \
                         shortly to get its answer",
                    )
                } else {
                    reused()
                });
            }
            Some(KeyState::Known(record)) if now.saturating_sub(record.at_ms) < window_ms => {
                if !key.same_request(record.fingerprint.as_ref()) {
                    return Err(reused());
                }
                return Ok(Claim::Replay(JobAccepted {
                    id: record.job,
                    accepted: record.accepted,
                    replayed: true,
                }));
            }
            // Past the window the key is free again.
            Some(KeyState::Known(_)) | None => {}
        }
        let claimed = KeyState::Claimed {
            fingerprint: key.fingerprint,
        };
        match keys.get_mut(app) {
            Some(keys) => keys.insert(key.key.clone(), claimed),
            None => keys
                .entry(app.to_owned())
                .or_default()
                .insert(key.key.clone(), claimed),
        };
        Ok(Claim::Fresh)
    }

    /// The submission that claimed `app`'s `key` was refused or not stored: the key is free.
    pub(crate) fn release_key(&self, app: &str, key: &str) {
        let mut keys = self.idempotency.lock();
        if let Some(keys) = keys.get_mut(app) {
            if matches!(keys.get(key), Some(KeyState::Claimed { .. })) {
                keys.remove(key);
            }
        }
    }

    /// Makes a job known; counts it active unless it is already final.
    pub(crate) fn insert(&self, job: Arc<Job>) {
        if !job.is_finished() {
            self.moved(None, Some(job.live_state()));
            self.unfinished.lock().insert(job.id, job.clone());
        }
        self.jobs.lock().insert(job.id, job);
    }

    /// A job not final yet moved from one state to another (`None`: it arrived, or ended).
    pub(crate) fn moved(&self, from: Option<JobState>, to: Option<JobState>) {
        if let Some(slot) = from.and_then(live_slot) {
            self.by_state[slot].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(slot) = to.and_then(live_slot) {
            self.by_state[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Jobs not final yet in each of [`LIVE_STATES`].
    pub(crate) fn by_state(&self) -> [u64; LIVE_STATES.len()] {
        std::array::from_fn(|slot| self.by_state[slot].load(Ordering::Relaxed).max(0) as u64)
    }

    /// The jobs not final yet, newest first, at most `limit`: read from the newest end of the
    /// map (ids sort by creation time), so a call looks at `limit` of them at most, whatever
    /// the number of unfinished jobs.
    pub(crate) fn newest_unfinished(&self, limit: usize) -> Vec<Arc<Job>> {
        self.unfinished
            .lock()
            .values()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    /// The jobs that finished at or after `since_ms`, newest first, at most `limit`: read
    /// from the newest end of the finished jobs kept, so a call looks at `limit` of them at
    /// most, whatever the retention holds.
    pub(crate) fn recently_finished(&self, since_ms: u64, limit: usize) -> Vec<Arc<Job>> {
        let ids: Vec<JobId> = self
            .finished
            .lock()
            .iter()
            .rev()
            .take_while(|(_, at)| *at >= since_ms)
            .take(limit)
            .map(|(id, _)| *id)
            .collect();
        let jobs = self.jobs.lock();
        ids.iter().filter_map(|id| jobs.get(id).cloned()).collect()
    }

    /// The job a claimed key was for is stored: from now on the key names it.
    pub(crate) fn commit_key(&self, app: &str, key: &str, record: KeyRecord) {
        let mut keys = self.idempotency.lock();
        if let Some(state) = keys.get_mut(app).and_then(|keys| keys.get_mut(key)) {
            *state = KeyState::Known(record);
        }
    }

    /// Jobs not final yet.
    pub(crate) fn active(&self) -> u64 {
        self.by_state().iter().sum()
    }

    /// Adds finished jobs read back at start-up to those kept.
    pub(crate) fn restore_finished(&self, mut finished: Vec<(JobId, u64)>) -> Forgotten {
        finished.sort_by_key(|(id, at)| (*at, *id));
        self.finished.lock().extend(finished);
        self.keep_finished(None)
    }

    /// A job became final: it joins the finished jobs kept. Returns what to forget.
    pub(crate) fn finished(&self, id: JobId, at_ms: u64, was: JobState) -> Forgotten {
        self.moved(Some(was), None);
        self.unfinished.lock().remove(&id);
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
                let Some(key) = &job.idempotency_key else {
                    continue;
                };
                let Some(app_keys) = idempotency.get_mut(&job.app) else {
                    continue;
                };
                // Only if the key still names this job.
                if matches!(app_keys.get(key), Some(KeyState::Known(record)) if record.job == *id) {
                    app_keys.remove(key);
                    keys.push((job.app.clone(), key.clone()));
                }
            }
        }
        tracing::debug!(jobs = ids.len(), "finished jobs forgotten");
        (ids, keys)
    }
}

/// The refusal of a key that names another request.
fn reused() -> WireError {
    WireError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was used for a different request of this app; use a new key for \
         a new request",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, fingerprint: u8) -> IdempotencyKey {
        IdempotencyKey::new(name, Fingerprint([fingerprint; 32]))
    }

    fn record(fingerprint: u8) -> KeyRecord {
        KeyRecord {
            job: JobId::new(),
            at_ms: 1_000,
            accepted: 3,
            fingerprint: Some(Fingerprint([fingerprint; 32])),
        }
    }

    #[test]
    fn a_key_is_claimed_once_then_replays_the_same_request_only() {
        let table = JobTable::new(Vec::new(), 10);
        let window = 60_000;
        assert!(matches!(
            table.claim_key("shop", &key("k", 1), 1_000, window),
            Ok(Claim::Fresh)
        ));
        // While the first is on its way: the same request is told to retry, another refused.
        let code = |claim: Result<Claim, WireError>| claim.map(|_| ()).unwrap_err().code;
        assert_eq!(
            code(table.claim_key("shop", &key("k", 1), 1_001, window)),
            ErrorCode::IdempotencyKeyInUse
        );
        assert_eq!(
            code(table.claim_key("shop", &key("k", 2), 1_001, window)),
            ErrorCode::IdempotencyKeyReused
        );
        // Another app's key of the same name is another key.
        assert!(matches!(
            table.claim_key("news", &key("k", 2), 1_001, window),
            Ok(Claim::Fresh)
        ));
        let stored = record(1);
        table.commit_key("shop", "k", stored);
        match table.claim_key("shop", &key("k", 1), 2_000, window) {
            Ok(Claim::Replay(accepted)) => {
                assert_eq!((accepted.id, accepted.accepted), (stored.job, 3));
                assert!(accepted.replayed);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(table.claim_key("shop", &key("k", 2), 2_000, window)),
            ErrorCode::IdempotencyKeyReused
        );
        // A key without a fingerprint names any request.
        let blind = IdempotencyKey {
            key: "k".into(),
            fingerprint: None,
        };
        assert!(matches!(
            table.claim_key("shop", &blind, 2_000, window),
            Ok(Claim::Replay(_))
        ));
        // Past the window the key is free again.
        assert!(matches!(
            table.claim_key("shop", &key("k", 2), 1_000 + window, window),
            Ok(Claim::Fresh)
        ));
    }

    /// A job of three tokens in chunks of one, created at `created_ms`.
    fn job(created_ms: u64) -> Arc<Job> {
        let (job, _) = Job::new(
            JobId::new(),
            crate::store::tests::record_submit(),
            1,
            created_ms,
        );
        Arc::new(job)
    }

    #[test]
    fn jobs_are_counted_by_state_and_listed_newest_first() {
        let table = JobTable::new(Vec::new(), 100);
        let jobs: Vec<Arc<Job>> = (0..5).map(|n| job(1_000 + n)).collect();
        for job in &jobs {
            table.insert(job.clone());
        }
        assert_eq!(table.by_state(), [5, 0, 0]);
        assert!(jobs[1].mark_dispatched());
        table.moved(Some(JobState::Queued), Some(JobState::Running));
        assert!(!jobs[1].mark_dispatched(), "moved once");
        assert_eq!(jobs[2].cancel(), crate::job::Cancel::Now);
        table.moved(Some(JobState::Queued), Some(JobState::Cancelling));
        assert!(
            !jobs[2].mark_dispatched(),
            "a cancelled job stays cancelling"
        );
        assert_eq!(table.by_state(), [3, 1, 1]);
        let newest: Vec<JobId> = table.newest_unfinished(3).iter().map(|j| j.id).collect();
        assert_eq!(newest, vec![jobs[4].id, jobs[3].id, jobs[2].id]);
        // Two finish, the older first: listed newest first, and only since the horizon.
        table.finished(jobs[1].id, 5_000, jobs[1].live_state());
        table.finished(jobs[2].id, 6_000, jobs[2].live_state());
        assert_eq!(table.by_state(), [3, 0, 0]);
        assert_eq!(table.active(), 3);
        let recent: Vec<JobId> = table
            .recently_finished(0, 10)
            .iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(recent, vec![jobs[2].id, jobs[1].id]);
        assert_eq!(table.recently_finished(5_500, 10).len(), 1);
        assert_eq!(table.recently_finished(0, 1).len(), 1);
        assert_eq!(table.newest_unfinished(10).len(), 3);
    }

    #[test]
    fn a_released_key_is_free_and_a_known_one_is_not_released() {
        let table = JobTable::new(
            vec![StoredKey {
                app: "shop".into(),
                key: "old".into(),
                record: record(1),
            }],
            10,
        );
        assert!(matches!(
            table.claim_key("shop", &key("k", 1), 1_000, 60_000),
            Ok(Claim::Fresh)
        ));
        table.release_key("shop", "k");
        assert!(matches!(
            table.claim_key("shop", &key("k", 2), 1_000, 60_000),
            Ok(Claim::Fresh)
        ));
        table.release_key("shop", "old");
        assert!(matches!(
            table.claim_key("shop", &key("old", 1), 1_000, 60_000),
            Ok(Claim::Replay(_))
        ));
    }
}
