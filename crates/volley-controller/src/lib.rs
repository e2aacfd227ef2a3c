//! Volley's controller.
//!
//! Fronts submit jobs over tarpc; the controller splits each job into chunks and feeds them
//! into **one bounded shared channel**. Every registered agent gets a dispatcher: `window`
//! workers that each pull the next chunk from the channel, call the agent's `deliver`, and
//! record the report. An idle agent therefore takes the next chunk and a slow agent takes
//! fewer. A chunk whose agent fails, times out or is dropped for missing heartbeats goes back
//! into the channel for another agent, and the duplicates this may cause are counted.
//!
//! ```text
//! submit ──> Job ──feeder──> [ shared bounded channel ] ──> agent A: window workers ──> deliver
//!                                                     └──> agent B: window workers ──> deliver
//! ```

mod job;
mod store;
mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio_util::sync::CancellationToken;
use volley_config::{Config, ControllerConfig};
use volley_contracts::{
    AgentClient, AgentId, AgentInfo, AgentStat, AppCounters, Chunk, ChunkFailure, ChunkId,
    ChunkReport, ClusterStats, Controller, ErrorCode, Held, Histogram, InvalidTokenPage,
    JobAccepted, JobId, JobStatus, LatencyStat, OutcomeCount, Platform, Registration,
    RejectionCount, SubmitJob, WireError,
};

use crate::job::{ChunkSpec, Job};
use crate::store::{NewJob, Store, Write};

pub use crate::store::StoreError;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The listener failed.
    #[error("controller listener: {0}")]
    Io(#[from] std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An app's webhook cannot be set up (its `ca_file`).
    #[error("{0}")]
    Webhook(String),
}

/// One unit of work in the shared channel.
#[derive(Debug)]
struct Work {
    job: Arc<Job>,
    spec: ChunkSpec,
    /// The lease epoch this hand-out uses; a hand-back increments it.
    epoch: u32,
}

impl Work {
    fn chunk_id(&self) -> ChunkId {
        ChunkId {
            job: self.job.id,
            index: self.spec.index,
        }
    }
}

/// A chunk out with an agent.
#[derive(Debug)]
struct Lease {
    agent: AgentId,
    epoch: u32,
    expires: Instant,
    /// Cancelled when the lease expires: the dispatcher abandons the call and hands the
    /// chunk to another agent.
    lost: CancellationToken,
}

/// A submission that passed the checks and holds its room, on its way to the store.
#[derive(Debug)]
struct Admitted {
    /// Its position in the batch.
    slot: usize,
    id: JobId,
    size: u64,
    submit: SubmitJob,
}

/// What became of one submission before the store.
// Moved once per submission; boxing the large variant would cost an allocation per job.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Admission {
    /// An idempotent repeat of a job the controller knows.
    Known(JobAccepted),
    /// A new job, and the store write that records it.
    New(Admitted, Write),
}

/// Why a submission was refused, as counted in the stats.
#[derive(Debug, Clone, Copy)]
enum Rejection {
    Overloaded,
    Draining,
    TooLarge,
    Empty,
    Store,
}

impl Rejection {
    const ALL: [Rejection; 5] = [
        Rejection::Overloaded,
        Rejection::Draining,
        Rejection::TooLarge,
        Rejection::Empty,
        Rejection::Store,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Rejection::Overloaded => "overloaded",
            Rejection::Draining => "draining",
            Rejection::TooLarge => "too_large",
            Rejection::Empty => "empty",
            Rejection::Store => "store",
        }
    }
}

/// (platform, outcome, class, reason) of an app's per-reason counters.
type OutcomeKey = (Platform, &'static str, String, String);

/// The counters of one app, kept together so that recording a chunk takes one lock and
/// one lookup by the app's name (no key to allocate).
#[derive(Debug, Default)]
struct AppTally {
    /// (delivered, failed or invalid) per platform, once the platform had a chunk.
    counters: [Option<(u64, u64)>; 2],
    /// Final outcomes by provider and reason.
    outcomes: HashMap<OutcomeKey, u64>,
    /// Accepted → finished.
    job_latency: Option<Histogram>,
    /// Handed out → reported, per platform.
    chunk_latency: [Option<Histogram>; 2],
}

/// A registered agent.
#[derive(Debug)]
struct AgentEntry {
    info: AgentInfo,
    last_seen: Instant,
    in_flight: Arc<AtomicU64>,
    chunks_done: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// The controller's shared state.
#[derive(Debug)]
struct State {
    config: ControllerConfig,
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    idempotency: Mutex<HashMap<String, (JobId, u64)>>,
    store: Store,
    leases: Mutex<HashMap<ChunkId, Lease>>,
    /// Chunks out with agents right now (a draining controller waits for them).
    out: AtomicU64,
    queue_tx: async_channel::Sender<Work>,
    queue_rx: async_channel::Receiver<Work>,
    /// Chunks given back by an agent. Unbounded, but it never holds more than the chunks that
    /// were out with agents, and a worker drains it before the shared channel so that a full
    /// shared channel can never block a hand-back.
    retry_tx: async_channel::Sender<Work>,
    retry_rx: async_channel::Receiver<Work>,
    agents: Mutex<HashMap<AgentId, AgentEntry>>,
    next_agent: AtomicU64,
    pending_notifications: AtomicU64,
    /// Jobs not final yet.
    active_jobs: AtomicU64,
    /// Feeder tasks waiting for room in the shared channel.
    feeders: AtomicU64,
    /// Finished jobs still kept, oldest first, with when they finished.
    finished: Mutex<std::collections::VecDeque<(JobId, u64)>>,
    /// When finished jobs were last forgotten before their retention (for a rate-limited
    /// warning), ms since the epoch.
    early_forget_warned: AtomicU64,
    redispatched: AtomicU64,
    /// Per-app counters, outcomes and latencies.
    tallies: Mutex<HashMap<String, AppTally>>,
    /// Submissions refused, indexed like [`Rejection::ALL`].
    rejections: [AtomicU64; Rejection::ALL.len()],
    /// Invalid-token webhooks.
    outbox: webhook::Outbox,
    /// Cancelled on the first shutdown signal: no new job, no new hand-out.
    draining: CancellationToken,
    /// Cancelled when the controller stops.
    shutdown: CancellationToken,
}

/// Runs a controller on `listener` until `shutdown` resolves.
///
/// It reads `config.controller` and, from `config.apps`, each app's invalid-token webhook.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (state, serving) = start(config, listener)?;
    let serving = tokio::spawn(serving);
    shutdown.await;
    // Drain: take no new job, hand out no new chunk, wait for the chunks out with agents to
    // report or their leases to expire. Whatever is unfinished is in the store.
    tracing::info!("controller draining");
    state.draining.cancel();
    let grace = state.config.shutdown_grace;
    let waited = tokio::time::timeout(grace, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while state.out.load(Ordering::Relaxed) > 0 {
            tick.tick().await;
        }
    })
    .await;
    if waited.is_err() {
        tracing::warn!(
            chunks = state.out.load(Ordering::Relaxed),
            "grace period over with chunks still out; they resume after restart"
        );
    }
    // Chunk reports recorded during the drain are committed before the process may exit,
    // and the store is closed (its directory free for the next controller) when this returns.
    if let Err(error) = state.store.write(Write::Close).await {
        tracing::error!(%error, "store flush failed");
    }
    state.shutdown.cancel();
    let _ = serving.await;
    tracing::info!("controller stopped");
    Ok(())
}

/// Starts a controller's tasks; returns its state and the future that serves connections.
fn start(
    config: Config,
    listener: tokio::net::TcpListener,
) -> Result<(Arc<State>, impl Future<Output = ()> + Send), ControllerError> {
    let local: SocketAddr = listener.local_addr()?;
    let webhooks = config
        .apps
        .iter()
        .filter_map(|app| Some((app.name.clone(), app.webhook.clone()?)))
        .collect();
    let outbox = webhook::Outbox::new(webhooks).map_err(ControllerError::Webhook)?;
    let config = config.controller;
    let (store, recovered) = Store::open(&config.data_dir, config.fsync)?;
    let (queue_tx, queue_rx) = async_channel::bounded(config.queue_chunks);
    let (retry_tx, retry_rx) = async_channel::unbounded();
    let shutdown = CancellationToken::new();
    let state = Arc::new(State {
        config,
        jobs: Mutex::default(),
        idempotency: Mutex::new(recovered.keys),
        store,
        leases: Mutex::default(),
        out: AtomicU64::new(0),
        draining: shutdown.child_token(),
        queue_tx,
        queue_rx,
        retry_tx,
        retry_rx,
        agents: Mutex::default(),
        next_agent: AtomicU64::new(1),
        pending_notifications: AtomicU64::new(0),
        active_jobs: AtomicU64::new(0),
        feeders: AtomicU64::new(0),
        finished: Mutex::default(),
        early_forget_warned: AtomicU64::new(0),
        redispatched: AtomicU64::new(0),
        tallies: Mutex::default(),
        rejections: std::array::from_fn(|_| AtomicU64::new(0)),
        outbox,
        shutdown,
    });
    state.restore(recovered.jobs);
    state.outbox.restore(&state.store, recovered.webhook);
    state
        .outbox
        .spawn_senders(state.store.clone(), state.shutdown.clone());
    tokio::spawn(watch_agents(state.clone()));
    tokio::spawn(watch_leases(state.clone()));
    tokio::spawn(expire_jobs(state.clone()));
    tracing::info!(listen = %local, "controller listening");
    let server = ControllerServer {
        state: state.clone(),
    };
    let stop = state.shutdown.clone();
    let serving = async move {
        let incoming = volley_contracts::listen(listener);
        let serve = incoming.for_each(move |(peer, transport)| {
            let server = server.clone();
            async move {
                tracing::debug!(%peer, "tarpc connection");
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(
                    channel
                        .execute(server.serve())
                        .for_each(|response| async move {
                            tokio::spawn(response);
                        }),
                );
            }
        });
        tokio::select! {
            () = serve => {}
            () = stop.cancelled() => {}
        }
    };
    Ok((state, serving))
}

/// The tarpc service implementation.
#[derive(Clone, Debug)]
struct ControllerServer {
    state: Arc<State>,
}

impl Controller for ControllerServer {
    async fn submit(self, _: Context, job: SubmitJob) -> Result<JobAccepted, WireError> {
        let mut answers = self.state.submit_many(vec![job]).await;
        answers.pop().unwrap_or_else(|| {
            Err(WireError::new(
                ErrorCode::Internal,
                "submission left unanswered",
            ))
        })
    }

    async fn submit_many(
        self,
        _: Context,
        jobs: Vec<SubmitJob>,
    ) -> Vec<Result<JobAccepted, WireError>> {
        self.state.submit_many(jobs).await
    }

    async fn status(
        self,
        _: Context,
        id: JobId,
        invalid_limit: u32,
    ) -> Result<JobStatus, WireError> {
        let job = self.state.job(id)?;
        Ok(job.status(invalid_limit as usize))
    }

    async fn invalid_tokens(
        self,
        _: Context,
        id: JobId,
        offset: u64,
        limit: u32,
    ) -> Result<InvalidTokenPage, WireError> {
        Ok(self.state.job(id)?.invalid_page(offset, limit))
    }

    async fn cancel(self, _: Context, id: JobId) -> Result<JobStatus, WireError> {
        let job = self.state.job(id)?;
        job.cancel();
        self.state
            .store
            .write(Write::Cancelled { id })
            .await
            .map_err(|error| WireError::new(ErrorCode::Internal, error.to_string()))?;
        tracing::info!(job = %id, "job cancelled");
        Ok(job.status(0))
    }

    async fn stats(self, _: Context) -> ClusterStats {
        self.state.stats()
    }

    async fn register(self, _: Context, agent: AgentInfo) -> Result<Registration, WireError> {
        let id = self.state.register(agent).await?;
        Ok(Registration {
            id,
            lease_ms: self.state.config.lease_time.as_millis() as u64,
        })
    }

    async fn heartbeat(
        self,
        _: Context,
        agent: AgentId,
        held: Vec<Held>,
    ) -> Result<Vec<ChunkId>, WireError> {
        match self.state.agents.lock().get_mut(&agent) {
            Some(entry) => entry.last_seen = Instant::now(),
            None => {
                return Err(WireError::new(
                    ErrorCode::NotFound,
                    format!("{agent} is not registered"),
                ))
            }
        }
        Ok(self.state.renew(agent, &held))
    }
}

impl State {
    fn job(&self, id: JobId) -> Result<Arc<Job>, WireError> {
        self.jobs
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no job {id}")))
    }

    /// Accepts a batch of submissions with one store commit; answers each in order. A job
    /// is answered `Ok` only once it is on disk.
    async fn submit_many(
        self: &Arc<Self>,
        submits: Vec<SubmitJob>,
    ) -> Vec<Result<JobAccepted, WireError>> {
        let now = job::now_ms();
        let mut answers: Vec<Option<Result<JobAccepted, WireError>>> =
            Vec::with_capacity(submits.len());
        let mut admitted: Vec<Admitted> = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        // A key repeated within the batch gets the first submission's job.
        let mut keys_in_batch: HashMap<String, usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        for (slot, submit) in submits.into_iter().enumerate() {
            if let Some(first) = submit
                .idempotency_key
                .as_ref()
                .and_then(|key| keys_in_batch.get(key))
            {
                repeats.push((slot, *first));
                answers.push(None);
                continue;
            }
            match self.admit(slot, submit, now) {
                Ok(Admission::Known(accepted)) => answers.push(Some(Ok(accepted))),
                Ok(Admission::New(job, write)) => {
                    if let Some(key) = &job.submit.idempotency_key {
                        keys_in_batch.insert(key.clone(), admitted.len());
                    }
                    admitted.push(job);
                    writes.push(write);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let written = if writes.is_empty() {
            Ok(())
        } else {
            self.store.write(Write::all(writes)).await
        };
        let accepted: Vec<Result<JobAccepted, WireError>> = match written {
            Ok(()) => admitted
                .iter()
                .map(|job| {
                    Ok(JobAccepted {
                        id: job.id,
                        accepted: job.size,
                    })
                })
                .collect(),
            Err(error) => {
                let size: u64 = admitted.iter().map(|job| job.size).sum();
                self.pending_notifications
                    .fetch_sub(size, Ordering::Relaxed);
                let error = error.to_string();
                admitted
                    .iter()
                    .map(|_| {
                        Err(self.reject(Rejection::Store, ErrorCode::Unavailable, error.clone()))
                    })
                    .collect()
            }
        };
        for (slot, first) in repeats {
            answers[slot] = Some(accepted[first].clone());
        }
        for (job, answer) in admitted.into_iter().zip(accepted) {
            answers[job.slot] = Some(answer.clone());
            if answer.is_ok() {
                self.start_job(job, now);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.unwrap_or_else(|| {
                    Err(WireError::new(
                        ErrorCode::Internal,
                        "submission left unanswered",
                    ))
                })
            })
            .collect()
    }

    /// Checks a submission and takes room for it, or answers it at once: refused, or an
    /// idempotent repeat of a known job.
    fn admit(&self, slot: usize, submit: SubmitJob, now: u64) -> Result<Admission, WireError> {
        if self.draining.is_cancelled() {
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
        if let Some(key) = &submit.idempotency_key {
            let window = self.config.idempotency_window.as_millis() as u64;
            let known = self.idempotency.lock().get(key).copied();
            if let Some((id, at)) = known {
                if now.saturating_sub(at) < window {
                    if let Ok(job) = self.job(id) {
                        tracing::info!(job = %id, "repeated submission answered with its job");
                        return Ok(Admission::Known(JobAccepted {
                            id,
                            accepted: job.accepted,
                        }));
                    }
                }
            }
        }
        let size = submit.len() as u64;
        self.reserve(size)?;
        let id = JobId::new();
        let record = match NewJob::new(&submit, self.config.chunk_size as u32, now) {
            Ok(record) => record,
            Err(error) => {
                self.pending_notifications
                    .fetch_sub(size, Ordering::Relaxed);
                return Err(WireError::new(
                    ErrorCode::Internal,
                    format!("cannot store the job: {error}"),
                ));
            }
        };
        let write = Write::Job {
            id,
            job: record,
            idempotency: submit.idempotency_key.clone().map(|key| (key, now)),
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

    /// Makes a job that is on disk known and queues its chunks.
    fn start_job(self: &Arc<Self>, admitted: Admitted, now: u64) {
        let Admitted {
            id, size, submit, ..
        } = admitted;
        let (job, specs) = Job::new(id, submit, self.config.chunk_size, now);
        let job = Arc::new(job);
        if let Some(key) = &job.idempotency_key {
            self.idempotency.lock().insert(key.clone(), (id, now));
        }
        if size as usize >= volley_contracts::LOG_JOBS_FROM {
            tracing::info!(job = %id, app = %job.app, tokens = size, chunks = specs.len(), "job accepted");
        } else {
            tracing::debug!(job = %id, app = %job.app, tokens = size, chunks = specs.len(), "job accepted");
        }
        self.enqueue(job, specs.into_iter().map(|spec| (spec, 0)).collect());
    }

    /// Counts a refused submission and builds its error.
    fn reject(&self, why: Rejection, code: ErrorCode, message: String) -> WireError {
        self.rejections[why as usize].fetch_add(1, Ordering::Relaxed);
        WireError::new(code, message)
    }

    /// Takes room for `size` notifications under `controller.max_pending_notifications`, or
    /// refuses: the check and the addition are one atomic step, so concurrent submissions
    /// can never take the pending count past the limit together.
    fn reserve(&self, size: u64) -> Result<(), WireError> {
        let max = self.config.max_pending_notifications;
        if size > max {
            return Err(self.reject(
                Rejection::TooLarge,
                ErrorCode::InvalidArgument,
                format!("the job has {size} notifications, above controller.max_pending_notifications ({max})"),
            ));
        }
        let reserved = self.pending_notifications.fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            |pending| (pending + size <= max).then_some(pending + size),
        );
        match reserved {
            Ok(_) => Ok(()),
            Err(pending) => Err(self.reject(
                Rejection::Overloaded,
                ErrorCode::Overloaded,
                format!("{pending} notifications are pending; the limit is {max}"),
            )),
        }
    }

    /// Makes a job known and feeds its chunks into the shared channel (their notifications
    /// are already counted as pending).
    fn enqueue(self: &Arc<Self>, job: Arc<Job>, chunks: Vec<(ChunkSpec, u32)>) {
        // Counted before any chunk can go out, so that the decrement at the job's end never
        // comes first.
        if !job.is_finished() {
            self.active_jobs.fetch_add(1, Ordering::Relaxed);
        }
        self.jobs.lock().insert(job.id, job.clone());
        if chunks.is_empty() {
            return;
        }
        // Chunks go straight into the channel while it has room and no feeder is waiting (a
        // small job needs no task, and cannot take a slot ahead of a waiting broadcast); the
        // rest goes to a feeder that waits for room, so a huge job never floods it.
        let mut chunks = chunks.into_iter();
        let mut waiting = None;
        if self.feeders.load(Ordering::Acquire) == 0 {
            for (spec, epoch) in chunks.by_ref() {
                let work = Work {
                    job: job.clone(),
                    spec,
                    epoch,
                };
                match self.queue_tx.try_send(work) {
                    Ok(()) => {}
                    Err(async_channel::TrySendError::Full(work)) => {
                        waiting = Some(work);
                        break;
                    }
                    Err(async_channel::TrySendError::Closed(_)) => return,
                }
            }
            if waiting.is_none() {
                return;
            }
        }
        let tx = self.queue_tx.clone();
        let state = self.clone();
        state.feeders.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            let works = waiting.into_iter().chain(chunks.map(|(spec, epoch)| Work {
                job: job.clone(),
                spec,
                epoch,
            }));
            for work in works {
                if tx.send(work).await.is_err() {
                    break;
                }
            }
            state.feeders.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Takes back the jobs found in the store at start-up.
    fn restore(self: &Arc<Self>, jobs: Vec<store::StoredJob>) {
        let mut resumed = 0;
        let mut finished = Vec::new();
        for stored in jobs {
            let (job, chunks) = Job::restore(stored);
            if let Some(at) = job.finished_ms() {
                finished.push((job.id, at));
            }
            let pending: u64 = chunks.iter().map(|(spec, _)| spec.len() as u64).sum();
            self.pending_notifications
                .fetch_add(pending, Ordering::Relaxed);
            if !chunks.is_empty() {
                resumed += 1;
                tracing::info!(job = %job.id, app = %job.app, chunks = chunks.len(), "resuming job");
            }
            self.enqueue(Arc::new(job), chunks);
        }
        if resumed > 0 {
            tracing::info!(jobs = resumed, "unfinished jobs resumed from the store");
        }
        finished.sort_by_key(|(id, at)| (*at, *id));
        self.finished.lock().extend(finished);
        self.keep_finished(None);
    }

    /// Adds a finished job (if any) to those kept, and keeps at most
    /// `controller.max_finished_jobs`: once that is passed by 1% the oldest are forgotten, in
    /// one batch (one store write) rather than one by one.
    fn keep_finished(&self, finished: Option<(JobId, u64)>) {
        let max = self.config.max_finished_jobs;
        let evicted: Vec<JobId> = {
            let mut kept = self.finished.lock();
            kept.extend(finished);
            if kept.len() <= max + (max / 100).max(1) {
                return;
            }
            let excess = kept.len() - max;
            kept.drain(..excess).map(|(id, _)| id).collect()
        };
        let now = job::now_ms();
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
        self.forget(evicted);
    }

    /// Forgets finished jobs: their status, their idempotency keys, their records.
    fn forget(&self, ids: Vec<JobId>) {
        if ids.is_empty() {
            return;
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
        self.store.write_later(Write::Forget { ids, keys });
    }

    /// Renews the leases an agent holds; returns the held chunks it no longer owns.
    fn renew(&self, agent: AgentId, held: &[Held]) -> Vec<ChunkId> {
        let expires = Instant::now() + self.config.lease_time;
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

    async fn register(self: &Arc<Self>, info: AgentInfo) -> Result<AgentId, WireError> {
        let client = volley_contracts::connect_agent(info.addr.as_str())
            .await
            .map_err(|error| {
                WireError::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach agent at {}: {error}", info.addr),
                )
            })?;
        let id = AgentId(self.next_agent.fetch_add(1, Ordering::Relaxed));
        let stop = self.shutdown.child_token();
        let in_flight = Arc::new(AtomicU64::new(0));
        let chunks_done = Arc::new(AtomicU64::new(0));
        for worker in 0..info.window.max(1) {
            let worker = Worker {
                state: self.clone(),
                agent: id,
                worker,
                client: client.clone(),
                apps: info.apps.clone(),
                stop: stop.clone(),
                in_flight: in_flight.clone(),
                chunks_done: chunks_done.clone(),
            };
            tokio::spawn(worker.run());
        }
        tracing::info!(agent = %id, name = %info.name, addr = %info.addr, window = info.window, apps = ?info.apps, "agent registered");
        self.agents.lock().insert(
            id,
            AgentEntry {
                info,
                last_seen: Instant::now(),
                in_flight,
                chunks_done,
                stop,
            },
        );
        Ok(id)
    }

    fn drop_agent(&self, id: AgentId, why: &str) {
        if let Some(entry) = self.agents.lock().remove(&id) {
            entry.stop.cancel();
            tracing::warn!(agent = %id, name = %entry.info.name, why, "agent dropped");
        }
    }

    /// Puts a chunk back for another agent.
    fn requeue(&self, work: Work) {
        // The receiver lives in `self`, so the channel cannot be closed.
        let _ = self.retry_tx.try_send(work);
    }

    /// Records a chunk's final report: the job's progress, the store, the webhook outbox and
    /// the app's counters (with the chunk's round trip, `took_ms`, when it went out).
    fn record(&self, work: &Work, report: &ChunkReport, took_ms: Option<u64>) {
        let report = balanced(report, work.spec.len());
        let Some(totals) = work.job.apply_report(&work.spec, &report) else {
            return;
        };
        // The job's end, as the job recorded it, when this was its last chunk.
        let finished_ms = totals
            .finished_job
            .then(|| work.job.finished_ms().unwrap_or_else(job::now_ms));
        let mut entries = Vec::new();
        if !report.invalid.is_empty() && self.outbox.has(&work.job.app) {
            let tokens = work
                .job
                .invalid_slice(totals.invalid_start, report.invalid.len());
            entries = self
                .outbox
                .entries_for(&work.job.app, work.job.id, work.spec.index, tokens);
        }
        if let Ok(bytes) = bincode::serialize(&report) {
            let webhook = entries
                .iter()
                .filter_map(|(key, entry)| Some((*key, bincode::serialize(entry).ok()?)))
                .collect();
            self.store.write_later(Write::Done {
                id: work.job.id,
                index: work.spec.index,
                at_ms: finished_ms.unwrap_or_else(job::now_ms),
                report: bytes,
                webhook,
            });
        }
        // Queued after the report's write, so an acknowledgement is always applied after it.
        self.outbox.push(entries);
        self.count(work, &report, &totals, took_ms, finished_ms);
        self.pending_notifications
            .fetch_sub(work.spec.len() as u64, Ordering::Relaxed);
        if let Some(finished_ms) = finished_ms {
            self.finish_job(work, finished_ms);
        }
    }

    /// Runs `f` on the tally of `app`, creating it on first use.
    fn tally<T>(&self, app: &str, f: impl FnOnce(&mut AppTally) -> T) -> T {
        let mut tallies = self.tallies.lock();
        match tallies.get_mut(app) {
            Some(tally) => f(tally),
            None => f(tallies.entry(app.to_owned()).or_default()),
        }
    }

    /// Adds a chunk to its app's counters, outcomes and latencies, under one lock.
    fn count(
        &self,
        work: &Work,
        report: &ChunkReport,
        totals: &job::ChunkTotals,
        took_ms: Option<u64>,
        finished_ms: Option<u64>,
    ) {
        // Invalid tokens and failures, grouped by reason before the lock, so that a key is
        // allocated per reason, not per token. A clean chunk allocates nothing.
        let mut reasons: Vec<(&'static str, &str, &str, u64)> = Vec::new();
        let failures = report
            .invalid
            .iter()
            .map(|(_, reason, _)| ("invalid", "", reason.as_str()))
            .chain(
                report
                    .failed
                    .iter()
                    .map(|failure| ("failed", failure.class.as_str(), failure.reason.as_str())),
            );
        for (outcome, class, reason) in failures {
            match reasons
                .iter_mut()
                .find(|(o, c, r, _)| *o == outcome && *c == class && *r == reason)
            {
                Some(slot) => slot.3 += 1,
                None => reasons.push((outcome, class, reason, 1)),
            }
        }
        let platform = work.spec.platform;
        self.tally(&work.job.app, |tally| {
            let counters = tally.counters[platform.index()].get_or_insert((0, 0));
            counters.0 += totals.success;
            counters.1 += totals.error;
            let plain = [
                ("delivered", u64::from(report.delivered)),
                ("cancelled", u64::from(report.cancelled)),
            ];
            for (outcome, n) in plain.into_iter().filter(|(_, n)| *n > 0) {
                // Empty strings allocate nothing.
                *tally
                    .outcomes
                    .entry((platform, outcome, String::new(), String::new()))
                    .or_default() += n;
            }
            for (outcome, class, reason, n) in reasons {
                *tally
                    .outcomes
                    .entry((platform, outcome, class.to_owned(), reason.to_owned()))
                    .or_default() += n;
            }
            if let Some(took) = took_ms {
                tally.chunk_latency[platform.index()]
                    .get_or_insert_with(Histogram::default)
                    .observe(took);
            }
            if let Some(finished) = finished_ms {
                tally
                    .job_latency
                    .get_or_insert_with(Histogram::default)
                    .observe(finished.saturating_sub(work.job.created_ms));
            }
        });
    }

    /// Finishes a chunk of a cancelled job without sending it.
    fn skip_cancelled(&self, work: &Work) {
        let report = volley_contracts::ChunkReport {
            cancelled: work.spec.len() as u32,
            ..volley_contracts::ChunkReport::default()
        };
        self.record(work, &report, None);
    }

    /// A job's last chunk is recorded: it joins the finished jobs kept, and is logged.
    fn finish_job(&self, work: &Work, finished_ms: u64) {
        self.active_jobs.fetch_sub(1, Ordering::Relaxed);
        self.keep_finished(Some((work.job.id, finished_ms)));
        if work.job.accepted as usize >= volley_contracts::LOG_JOBS_FROM {
            let status = work.job.status(0);
            tracing::info!(
                job = %work.job.id,
                app = %work.job.app,
                delivered = status.delivered,
                invalid = status.invalid,
                failed = status.failed,
                cancelled = status.cancelled,
                possible_duplicates = status.possible_duplicates,
                "job finished"
            );
        } else {
            tracing::debug!(job = %work.job.id, app = %work.job.app, "job finished");
        }
    }

    fn stats(&self) -> ClusterStats {
        let agents = self
            .agents
            .lock()
            .iter()
            .map(|(id, entry)| AgentStat {
                id: *id,
                name: entry.info.name.clone(),
                addr: entry.info.addr.clone(),
                in_flight: entry.in_flight.load(Ordering::Relaxed) as u32,
                chunks_done: entry.chunks_done.load(Ordering::Relaxed),
            })
            .collect();
        let mut apps: Vec<AppCounters> = Vec::new();
        let mut outcomes: Vec<OutcomeCount> = Vec::new();
        let mut job_latency: Vec<LatencyStat> = Vec::new();
        let mut chunk_latency: Vec<LatencyStat> = Vec::new();
        for (app, tally) in self.tallies.lock().iter() {
            for platform in Platform::ALL {
                if let Some((success, error)) = tally.counters[platform.index()] {
                    apps.push(AppCounters {
                        app: app.clone(),
                        platform,
                        success,
                        error,
                    });
                }
                if let Some(histogram) = &tally.chunk_latency[platform.index()] {
                    chunk_latency.push(LatencyStat {
                        app: app.clone(),
                        platform: Some(platform),
                        histogram: histogram.clone(),
                    });
                }
            }
            outcomes.extend(tally.outcomes.iter().map(
                |((platform, outcome, class, reason), count)| OutcomeCount {
                    app: app.clone(),
                    platform: *platform,
                    outcome: (*outcome).to_owned(),
                    class: class.clone(),
                    reason: reason.clone(),
                    count: *count,
                },
            ));
            if let Some(histogram) = &tally.job_latency {
                job_latency.push(LatencyStat {
                    app: app.clone(),
                    platform: None,
                    histogram: histogram.clone(),
                });
            }
        }
        apps.sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        // A counter, not a walk over the jobs: finished jobs are retained for a day, and
        // `/metrics` scrapes call this.
        let active_jobs = self.active_jobs.load(Ordering::Relaxed);
        outcomes.sort_by(|a, b| {
            (&a.app, a.platform, &a.outcome, &a.class, &a.reason)
                .cmp(&(&b.app, b.platform, &b.outcome, &b.class, &b.reason))
        });
        job_latency.sort_by(|a, b| a.app.cmp(&b.app));
        chunk_latency.sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        ClusterStats {
            queue_max: self.config.queue_chunks as u64,
            queue_usage: (self.queue_rx.len() + self.retry_rx.len()) as u64,
            pending_notifications: self.pending_notifications.load(Ordering::Relaxed),
            active_jobs,
            agents,
            apps,
            chunks_redispatched: self.redispatched.load(Ordering::Relaxed),
            max_pending_notifications: self.config.max_pending_notifications,
            handed_back_chunks: self.retry_rx.len() as u64,
            rejections: Rejection::ALL
                .iter()
                .map(|why| RejectionCount {
                    reason: why.as_str().to_owned(),
                    count: self.rejections[*why as usize].load(Ordering::Relaxed),
                })
                .collect(),
            outcomes,
            job_latency,
            chunk_latency,
            webhooks: self.outbox.stats(),
        }
    }
}

/// An agent refused a chunk because the app's sends are paused there (`ResourceExhausted`).
const APP_PAUSED: &str = "app paused on the agent";
/// How long a chunk refused for a paused app waits before it is queued again.
const PAUSED_REQUEUE_DELAY: Duration = Duration::from_millis(500);
/// Most chunks in one `deliver` call.
const MAX_BATCH_CHUNKS: usize = 1024;

/// One of an agent's `window` workers: pulls chunks from the shared channel and delivers them.
///
/// A worker takes the next chunk and, without waiting, whatever else is queued up to one
/// chunk's worth of tokens (`controller.chunk_size`): a broadcast's chunks go one per call as
/// before, while single-notification jobs queued meanwhile share one `deliver` call, one
/// store commit for their leases and the agent's HTTP/2 writes.
struct Worker {
    state: Arc<State>,
    agent: AgentId,
    worker: u32,
    client: AgentClient,
    apps: Vec<String>,
    stop: CancellationToken,
    in_flight: Arc<AtomicU64>,
    chunks_done: Arc<AtomicU64>,
}

impl Worker {
    async fn run(self) {
        loop {
            let state = &self.state;
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = state.draining.cancelled() => return,
                work = state.retry_rx.recv() => match work {
                    Ok(work) => work,
                    Err(_) => return,
                },
                work = state.queue_rx.recv() => match work {
                    Ok(work) => work,
                    Err(_) => return,
                },
            };
            let batch = self.gather(first).await;
            if !batch.is_empty() && !self.deliver(batch).await {
                return;
            }
        }
    }

    /// `first` and the chunks queued behind it, up to a chunk's worth of tokens, ready to
    /// send. Chunks of cancelled jobs are finished here. A chunk of an app this agent does not
    /// serve ends the gathering and goes back for the others, as does one that would take the
    /// call past the token budget (it leads the next call).
    async fn gather(&self, first: Work) -> Vec<(Work, Chunk)> {
        let state = &self.state;
        let budget = state.config.chunk_size;
        let mut batch: Vec<(Work, Chunk)> = Vec::new();
        let mut tokens = 0;
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(work) = next.take() {
            taken += 1;
            work.job.mark_dispatched();
            if work.job.is_cancelled() {
                state.skip_cancelled(&work);
            } else if !self.apps.iter().any(|app| *app == work.job.app) {
                state.requeue(work);
                if batch.is_empty() {
                    // Another agent holds this app's credentials; the pause keeps an agent
                    // that serves no queued app from spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                break;
            } else if !batch.is_empty() && tokens + work.spec.len() > budget {
                state.requeue(work);
                break;
            } else {
                match work.job.chunk(&work.spec, state.config.collapse_duplicates) {
                    Some(mut chunk) => {
                        chunk.epoch = work.epoch;
                        tokens += work.spec.len();
                        batch.push((work, chunk));
                    }
                    None => {
                        tracing::error!(job = %work.job.id, "chunk has no rendering for its platform");
                        state.skip_cancelled(&work);
                    }
                }
            }
            if tokens < budget && taken < MAX_BATCH_CHUNKS {
                next = state
                    .retry_rx
                    .try_recv()
                    .or_else(|_| state.queue_rx.try_recv())
                    .ok();
            }
        }
        batch
    }

    /// Leases and sends one batch and records each chunk's outcome; false when this worker
    /// must stop (the agent is draining or was dropped).
    async fn deliver(&self, batch: Vec<(Work, Chunk)>) -> bool {
        let state = &self.state;
        let (works, chunks): (Vec<Work>, Vec<Chunk>) = batch.into_iter().unzip();
        let count = works.len() as u64;
        // Counted as out before the lease is written: a draining controller waits for these
        // chunks from here on, and closes its store only after them.
        self.in_flight.fetch_add(count, Ordering::Relaxed);
        state.out.fetch_add(count, Ordering::Relaxed);
        let leased = state.lease(self.agent, &works).await;
        let lost = match leased {
            Ok(lost) if !state.draining.is_cancelled() => lost,
            outcome => {
                // Never sent: without a lease on disk a resend after a crash could not be
                // counted as a possible duplicate, and a draining controller hands out nothing
                // new. The chunks go back as they were.
                if let Err(error) = &outcome {
                    tracing::error!(%error, chunks = works.len(), "cannot record the leases; chunks not sent");
                }
                state.release(&works);
                self.in_flight.fetch_sub(count, Ordering::Relaxed);
                state.out.fetch_sub(count, Ordering::Relaxed);
                for work in works {
                    state.requeue(work);
                }
                if state.draining.is_cancelled() {
                    return false;
                }
                // A failing store: do not spin on the same chunks.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return true;
            }
        };
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + state.config.chunk_timeout;
        let sent = Instant::now();
        let every = |why: &'static str| works.iter().map(|_| Err(why)).collect::<Vec<_>>();
        let results: Vec<Result<ChunkReport, &'static str>> = tokio::select! {
            () = self.stop.cancelled() => every("agent dropped"),
            // One lease of the batch is gone (they expire together: the agent's heartbeats
            // renew them all): the whole call is abandoned and every chunk handed out again.
            () = lost.cancelled() => every("lease expired"),
            result = self.client.deliver(context, chunks) => match result {
                Ok(answers) if answers.len() == works.len() => {
                    answers.into_iter().map(|answer| self.read_answer(answer)).collect()
                }
                Ok(answers) => {
                    tracing::error!(agent = %self.agent, chunks = works.len(), answers = answers.len(), "agent answered a batch with the wrong number of reports");
                    every("rpc failed")
                }
                Err(error) => {
                    tracing::warn!(agent = %self.agent, worker = self.worker, %error, "chunk call failed");
                    every("rpc failed")
                }
            },
        };
        self.in_flight.fetch_sub(count, Ordering::Relaxed);
        state.out.fetch_sub(count, Ordering::Relaxed);
        state.release(&works);
        let took = sent.elapsed().as_millis() as u64;
        let mut keep_going = true;
        for (work, result) in works.into_iter().zip(results) {
            keep_going &= self.settle(work, result, took);
        }
        keep_going
    }

    /// What one chunk's answer means for the dispatcher.
    fn read_answer(
        &self,
        answer: Result<ChunkReport, WireError>,
    ) -> Result<ChunkReport, &'static str> {
        match answer {
            Ok(report) => Ok(report),
            Err(error) if error.code == ErrorCode::Unavailable => Err("agent is draining"),
            Err(error) if error.code == ErrorCode::ResourceExhausted => Err(APP_PAUSED),
            Err(error) if error.code == ErrorCode::LeaseLost => Err("lease expired"),
            Err(error) => {
                tracing::warn!(agent = %self.agent, worker = self.worker, code = ?error.code, %error, "agent refused a chunk");
                Err("agent refused the chunk")
            }
        }
    }

    /// Records a chunk's report, or hands it out again; false when this worker must stop.
    ///
    /// A report always counts: this worker holds the chunk's only hand-out (a chunk goes out
    /// again only through the worker that gave up on it), so even a report that won the race
    /// with its lease's expiry is for the live epoch, and dropping it would leave the chunk
    /// unfinished with nobody to send it.
    fn settle(&self, work: Work, result: Result<ChunkReport, &'static str>, took_ms: u64) -> bool {
        let state = &self.state;
        let agent = self.agent;
        match result {
            Ok(report) => {
                self.chunks_done.fetch_add(1, Ordering::Relaxed);
                state.record(&work, &report, Some(took_ms));
                true
            }
            Err(APP_PAUSED) => {
                // The agent paused the app (its provider's circuit is open) and sent nothing.
                // The chunk waits a moment outside the queues, so that the paused app's chunks
                // do not keep every worker busy with refusals while other apps' chunks wait.
                tracing::debug!(agent = %agent, job = %work.job.id, chunk = work.spec.index, app = %work.job.app, "app paused on the agent; chunk back in a moment");
                let retry = Work {
                    epoch: work.epoch + 1,
                    ..work
                };
                let later = state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(PAUSED_REQUEUE_DELAY).await;
                    later.requeue(retry);
                });
                true
            }
            Err(why) => {
                // A chunk the agent refused was never sent; any other may have been, in part.
                let maybe_sent = why != "agent is draining" && why != "agent refused the chunk";
                tracing::warn!(agent = %agent, job = %work.job.id, chunk = work.spec.index, epoch = work.epoch, why, "handing the chunk to another agent");
                if maybe_sent {
                    let count = work.spec.len() as u64;
                    work.job.note_redispatch(&work.spec);
                    state.store.write_later(Write::Duplicates {
                        id: work.job.id,
                        count,
                    });
                }
                state.redispatched.fetch_add(1, Ordering::Relaxed);
                let retry = Work {
                    epoch: work.epoch + 1,
                    ..work
                };
                state.requeue(retry);
                match why {
                    // The agent finishes what it holds and leaves; this worker just stops
                    // taking chunks for it.
                    "agent is draining" => false,
                    "lease expired" | "agent refused the chunk" => true,
                    _ => {
                        state.drop_agent(agent, why);
                        false
                    }
                }
            }
        }
    }
}

impl State {
    /// Leases a batch of chunks to an agent; the token is cancelled when any of the leases
    /// expires.
    ///
    /// The leases are on disk (one commit for the batch) before the chunks go out, so that a
    /// controller that dies while they are out counts their tokens as possible duplicates
    /// when it resends them.
    async fn lease(&self, agent: AgentId, works: &[Work]) -> Result<CancellationToken, StoreError> {
        let lost = CancellationToken::new();
        let expires = Instant::now() + self.config.lease_time;
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
        self.store.write(Write::all(writes)).await?;
        Ok(lost)
    }

    /// Ends the leases of a batch (those not expired already).
    fn release(&self, works: &[Work]) {
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
}

/// Expires leases that their agents stopped renewing.
async fn watch_leases(state: Arc<State>) {
    let mut tick =
        tokio::time::interval((state.config.lease_time / 4).max(Duration::from_millis(25)));
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let mut leases = state.leases.lock();
        leases.retain(|chunk, lease| {
            if lease.expires <= now {
                tracing::warn!(%chunk, agent = %lease.agent, epoch = lease.epoch, "lease expired");
                lease.lost.cancel();
                false
            } else {
                true
            }
        });
    }
}

/// The report with its counts made to cover the chunk exactly: an agent that reports fewer
/// outcomes than tokens (a bug) gets the rest counted as failed (`internal`, `unreported`),
/// one that reports more has its delivered count cut, so that every job keeps
/// `accepted = delivered + invalid + failed + cancelled`.
fn balanced(report: &ChunkReport, len: usize) -> std::borrow::Cow<'_, ChunkReport> {
    let len = len as u64;
    let others = report.invalid.len() as u64 + report.failed.len() as u64;
    let reported = u64::from(report.delivered) + u64::from(report.cancelled) + others;
    if reported == len {
        return std::borrow::Cow::Borrowed(report);
    }
    tracing::error!(
        tokens = len,
        reported,
        "a chunk report does not cover its tokens; balancing it"
    );
    let mut fixed = report.clone();
    if reported < len {
        fixed
            .failed
            .extend((0..len - reported).map(|_| ChunkFailure {
                index: u32::MAX,
                class: "internal".into(),
                reason: "unreported".into(),
            }));
    } else {
        let excess = reported - len;
        let cut = excess.min(u64::from(fixed.delivered));
        fixed.delivered -= cut as u32;
        let rest = (excess - cut).min(u64::from(fixed.cancelled));
        fixed.cancelled -= rest as u32;
        let rest = excess - cut - rest;
        for _ in 0..rest {
            if fixed.failed.pop().is_none() {
                fixed.invalid.pop();
            }
        }
    }
    std::borrow::Cow::Owned(fixed)
}

/// Drops agents whose heartbeats stopped.
async fn watch_agents(state: Arc<State>) {
    let timeout = state.config.heartbeat_timeout;
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let silent: Vec<AgentId> = state
            .agents
            .lock()
            .iter()
            .filter(|(_, entry)| entry.last_seen.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            state.drop_agent(id, "missed heartbeats");
        }
    }
}

/// Forgets finished jobs after the retention period.
async fn expire_jobs(state: Arc<State>) {
    let retention = state.config.job_retention;
    let mut tick =
        tokio::time::interval(Duration::from_secs(60).min(retention.max(Duration::from_secs(1))));
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let horizon = job::now_ms().saturating_sub(retention.as_millis() as u64);
        let expired: Vec<JobId> = {
            let mut finished = state.finished.lock();
            let due = finished.iter().take_while(|(_, at)| *at <= horizon).count();
            finished.drain(..due).map(|(id, _)| id).collect()
        };
        if !expired.is_empty() {
            tracing::info!(
                jobs = expired.len(),
                "finished jobs past their retention forgotten"
            );
            state.forget(expired);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(report: &ChunkReport) -> u64 {
        u64::from(report.delivered)
            + u64::from(report.cancelled)
            + report.invalid.len() as u64
            + report.failed.len() as u64
    }

    #[test]
    fn every_report_is_balanced_to_its_chunk() {
        let failure = || ChunkFailure {
            index: 0,
            class: "transient".into(),
            reason: "ServiceUnavailable".into(),
        };
        let cases = [
            // (delivered, cancelled, invalid, failed, chunk length)
            (10, 0, 0, 0, 10),
            (7, 0, 1, 1, 10),
            (3, 0, 0, 0, 10),
            (12, 0, 0, 0, 10),
            (0, 4, 0, 9, 10),
            (0, 0, 6, 6, 10),
        ];
        for (delivered, cancelled, invalid, failed, len) in cases {
            let report = ChunkReport {
                delivered,
                cancelled,
                invalid: (0..invalid)
                    .map(|i| (i, "Unregistered".into(), None))
                    .collect(),
                failed: (0..failed).map(|_| failure()).collect(),
                possible_duplicates: 0,
            };
            let fixed = balanced(&report, len);
            assert_eq!(total(&fixed), len as u64, "{report:?}");
            if total(&report) == len as u64 {
                assert!(matches!(fixed, std::borrow::Cow::Borrowed(_)));
            }
            if total(&report) < len as u64 {
                assert_eq!(
                    fixed.delivered, report.delivered,
                    "nothing is made delivered"
                );
            }
        }
    }
}
