//! Admission: whether a submission may become a job, and the room it takes.
//!
//! A submission is refused while the controller drains, when it is empty, when it would take
//! the pending notifications past `controller.max_pending_notifications`, and when no agent
//! has ever declared its app for one of its platforms (`409 no_credentials` at the front,
//! unless `controller.accept_unserved`). An idempotent repeat is answered with its job, and
//! a submission's key is claimed before anything else can refuse it (`jobs.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use volley_config::ControllerConfig;
use volley_contracts::{ErrorCode, JobAccepted, JobId, Platform, SubmitJob, WireError};

use crate::jobs::{Claim, JobTable};
use crate::registry::Registry;
use crate::store::{KeyRecord, NewJob, StoredKey, Write};

/// Why a submission was refused, as counted in the stats.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rejection {
    Overloaded,
    Draining,
    TooLarge,
    Empty,
    Store,
    NoCredentials,
}

impl Rejection {
    pub(crate) const ALL: [Rejection; 6] = [
        Rejection::Overloaded,
        Rejection::Draining,
        Rejection::TooLarge,
        Rejection::Empty,
        Rejection::Store,
        Rejection::NoCredentials,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::Overloaded => "overloaded",
            Rejection::Draining => "draining",
            Rejection::TooLarge => "too_large",
            Rejection::Empty => "empty",
            Rejection::Store => "store",
            Rejection::NoCredentials => "no_credentials",
        }
    }
}

/// A submission that passed the checks and holds its room, on its way to the store.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Its position in the batch.
    pub(crate) slot: usize,
    pub(crate) id: JobId,
    pub(crate) size: u64,
    pub(crate) submit: SubmitJob,
}

/// What became of one submission before the store.
// Moved once per submission; boxing the large variant would cost an allocation per job.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Admission {
    /// An idempotent repeat of a job the controller knows (`replayed` set).
    Known(JobAccepted),
    /// A new job, and the store write that records it.
    New(Admitted, Write),
}

/// The admission checks and the pending-notification count they guard.
#[derive(Debug)]
pub(crate) struct Admissions {
    max_pending: u64,
    chunk_size: u32,
    idempotency_window_ms: u64,
    accept_unserved: bool,
    /// The apps of the controller's configuration; `None` when it lists none (any app).
    apps: Option<HashSet<String>>,
    pending: AtomicU64,
    /// Submissions refused, indexed like [`Rejection::ALL`].
    rejections: [AtomicU64; Rejection::ALL.len()],
}

impl Admissions {
    pub(crate) fn new(config: &ControllerConfig, apps: Option<HashSet<String>>) -> Admissions {
        Admissions {
            apps,
            max_pending: config.max_pending_notifications,
            chunk_size: config.chunk_size as u32,
            idempotency_window_ms: config.idempotency_window.as_millis() as u64,
            accept_unserved: config.accept_unserved,
            pending: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The apps of the controller's configuration, which bound what agents may serve and
    /// what jobs are for; `None` when it lists none (any app).
    pub(crate) fn known_apps(&self) -> Option<&HashSet<String>> {
        self.apps.as_ref()
    }

    /// Checks a submission and takes room for it, or answers it at once: refused, or an
    /// idempotent repeat of a known job. A new job's key is claimed: the caller commits or
    /// releases it once the store has answered.
    pub(crate) fn admit(
        &self,
        slot: usize,
        submit: SubmitJob,
        now: u64,
        draining: bool,
        jobs: &JobTable,
        registry: &Registry,
    ) -> Result<Admission, WireError> {
        if draining {
            return Err(self.reject(
                Rejection::Draining,
                ErrorCode::Unavailable,
                "controller is shutting down".into(),
            ));
        }
        if submit.is_empty() {
            return Err(self.reject(
                Rejection::Empty,
                ErrorCode::InvalidArgument,
                "the job has no token".into(),
            ));
        }
        // A repeat is answered whatever else would refuse the submission now: it was accepted.
        let mut claimed = None;
        if let Some(key) = &submit.idempotency_key {
            match jobs.claim_key(&submit.app, key, now, self.idempotency_window_ms)? {
                Claim::Replay(accepted) => {
                    tracing::info!(job = %accepted.id, app = %submit.app, "repeated submission answered with its job");
                    return Ok(Admission::Known(accepted));
                }
                Claim::Fresh => claimed = Some((submit.app.clone(), key.key.clone())),
            }
        }
        let admitted = self.admit_claimed(slot, submit, now, registry);
        if let (Err(_), Some((app, key))) = (&admitted, &claimed) {
            jobs.release_key(app, key);
        }
        admitted
    }

    /// The checks after the key's claim, and the job's store write.
    fn admit_claimed(
        &self,
        slot: usize,
        submit: SubmitJob,
        now: u64,
        registry: &Registry,
    ) -> Result<Admission, WireError> {
        if let Some(apps) = &self.apps {
            if !apps.contains(&submit.app) {
                return Err(self.reject(
                    Rejection::NoCredentials,
                    ErrorCode::NoCredentials,
                    format!(
                        "app {:?} is not in the controller's configuration ([[apps]]): add it there, or to no role",
                        submit.app
                    ),
                ));
            }
        }
        if !self.accept_unserved {
            for platform in Platform::ALL {
                if !submit.tokens(platform).is_empty()
                    && !registry.may_be_served(&submit.app, platform)
                {
                    return Err(self.reject(
                        Rejection::NoCredentials,
                        ErrorCode::NoCredentials,
                        format!(
                            "no agent has declared credentials for app {:?} on {platform}: start an agent with them (or set controller.accept_unserved to queue such jobs)",
                            submit.app
                        ),
                    ));
                }
            }
        }
        let size = submit.len() as u64;
        self.reserve(size)?;
        let id = JobId::new();
        let record = match NewJob::new(&submit, self.chunk_size, now) {
            Ok(record) => record,
            Err(error) => {
                self.release(size);
                return Err(WireError::new(
                    ErrorCode::Internal,
                    format!("cannot store the job: {error}"),
                ));
            }
        };
        let key = submit.idempotency_key.as_ref().map(|key| StoredKey {
            app: submit.app.clone(),
            key: key.key.clone(),
            record: KeyRecord {
                job: id,
                at_ms: now,
                accepted: size,
                fingerprint: key.fingerprint,
            },
        });
        let write = Write::Job {
            id,
            job: record,
            key,
        };
        Ok(Admission::New(
            Admitted {
                slot,
                id,
                size,
                submit,
            },
            write,
        ))
    }

    /// Counts a refused submission and builds its error.
    pub(crate) fn reject(&self, why: Rejection, code: ErrorCode, message: String) -> WireError {
        self.rejections[why as usize].fetch_add(1, Ordering::Relaxed);
        WireError::new(code, message)
    }

    /// Takes room for `size` notifications under `controller.max_pending_notifications`, or
    /// refuses: the check and the addition are one atomic step, so concurrent submissions
    /// can never take the pending count past the limit together.
    fn reserve(&self, size: u64) -> Result<(), WireError> {
        let max = self.max_pending;
        if size > max {
            return Err(self.reject(
                Rejection::TooLarge,
                ErrorCode::InvalidArgument,
                format!("the job has {size} notifications, above controller.max_pending_notifications ({max})"),
            ));
        }
        let reserved = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending + size <= max).then_some(pending + size)
            });
        match reserved {
            Ok(_) => Ok(()),
            Err(pending) => Err(self.reject(
                Rejection::Overloaded,
                ErrorCode::Overloaded,
                format!("{pending} notifications are pending; the limit is {max}"),
            )),
        }
    }

    /// Takes room for notifications read back from the store (never refused).
    pub(crate) fn restore(&self, size: u64) {
        self.pending.fetch_add(size, Ordering::Relaxed);
    }

    /// Gives back the room of notifications that became final (or were never stored).
    pub(crate) fn release(&self, size: u64) {
        self.pending.fetch_sub(size, Ordering::Relaxed);
    }

    /// Notifications accepted and not final yet.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// `controller.max_pending_notifications`.
    pub(crate) fn max_pending(&self) -> u64 {
        self.max_pending
    }

    /// Refusals by reason, as the stats list them.
    pub(crate) fn rejections(&self) -> Vec<volley_contracts::RejectionCount> {
        Rejection::ALL
            .iter()
            .map(|why| volley_contracts::RejectionCount {
                reason: why.as_str().to_owned(),
                count: self.rejections[*why as usize].load(Ordering::Relaxed),
            })
            .collect()
    }
}
