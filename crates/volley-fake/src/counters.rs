//! Counters shared between the fake's thread (writer) and callers asking for [`Stats`] (readers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::Stats;

/// Statuses are indexed directly; 600 slots cover every HTTP status without a map or a lock.
const STATUS_SLOTS: usize = 600;

/// Lock-free counters; every field is written only by the fake's single thread.
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) distinct_tokens: AtomicU64,
    pub(crate) duplicate_tokens: AtomicU64,
    pub(crate) oauth_tokens_issued: AtomicU64,
    pub(crate) goaways_sent: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) max_open_streams_seen: AtomicU64,
    pub(crate) max_open_streams_before_auth: AtomicU64,
    by_status: StatusCounts,
}

/// Answers counted by HTTP status, without a map or a lock.
pub(crate) struct StatusCounts(Box<[AtomicU64]>);

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts((0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl StatusCounts {
    /// Counts one answer with `status`.
    pub(crate) fn bump(&self, status: u16) {
        if let Some(slot) = self.0.get(usize::from(status)) {
            slot.fetch_add(1, Relaxed);
        }
    }

    /// The statuses answered at least once, with their counts.
    pub(crate) fn snapshot(&self) -> BTreeMap<u16, u64> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(status, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (u16::try_from(status).unwrap_or(u16::MAX), n))
            })
            .collect()
    }
}

impl Counters {
    pub(crate) fn new() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            distinct_tokens: AtomicU64::new(0),
            duplicate_tokens: AtomicU64::new(0),
            oauth_tokens_issued: AtomicU64::new(0),
            goaways_sent: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            max_open_streams_seen: AtomicU64::new(0),
            max_open_streams_before_auth: AtomicU64::new(0),
            by_status: StatusCounts::default(),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn raise_to(counter: &AtomicU64, value: u64) {
        counter.fetch_max(value, Relaxed);
    }

    /// Counts one answered notification request.
    pub(crate) fn answered(&self, status: u16) {
        self.requests.fetch_add(1, Relaxed);
        self.by_status.bump(status);
        if status == 200 {
            self.delivered.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            requests: self.requests.load(Relaxed),
            by_status: self.by_status.snapshot(),
            delivered: self.delivered.load(Relaxed),
            distinct_tokens: self.distinct_tokens.load(Relaxed),
            duplicate_tokens: self.duplicate_tokens.load(Relaxed),
            oauth_tokens_issued: self.oauth_tokens_issued.load(Relaxed),
            goaways_sent: self.goaways_sent.load(Relaxed),
            connections: self.connections.load(Relaxed),
            max_open_streams_seen: self.max_open_streams_seen.load(Relaxed),
            max_open_streams_before_auth: self.max_open_streams_before_auth.load(Relaxed),
        }
    }
}
