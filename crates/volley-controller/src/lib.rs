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
use volley_config::ControllerConfig;
use volley_contracts::{
    AgentClient, AgentId, AgentInfo, AgentStat, AppCounters, ClusterStats, Controller, ErrorCode,
    JobAccepted, JobId, JobStatus, Platform, SubmitJob, WireError,
};

use crate::job::{ChunkSpec, Job};

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The listener failed.
    #[error("controller listener: {0}")]
    Io(#[from] std::io::Error),
}

/// One unit of work in the shared channel.
#[derive(Debug)]
struct Work {
    job: Arc<Job>,
    spec: ChunkSpec,
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
    idempotency: Mutex<HashMap<String, JobId>>,
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
    redispatched: AtomicU64,
    counters: Mutex<HashMap<(String, Platform), (u64, u64)>>,
    shutdown: CancellationToken,
}

/// A handle on a running controller, for in-process use (tests, `standalone`).
#[derive(Clone, Debug)]
pub struct ControllerHandle {
    state: Arc<State>,
}

impl ControllerHandle {
    /// Registered agents right now.
    pub fn agent_count(&self) -> usize {
        self.state.agents.lock().len()
    }
}

/// Runs a controller on `listener` until `shutdown` resolves.
pub async fn run(
    config: ControllerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (handle, serving) = start(config, listener)?;
    tokio::select! {
        () = shutdown => {}
        () = serving => {}
    }
    handle.state.shutdown.cancel();
    tracing::info!("controller stopped");
    Ok(())
}

/// Starts a controller's tasks; returns its handle and the future that serves connections.
pub fn start(
    config: ControllerConfig,
    listener: tokio::net::TcpListener,
) -> Result<(ControllerHandle, impl Future<Output = ()> + Send), ControllerError> {
    let local: SocketAddr = listener.local_addr()?;
    let (queue_tx, queue_rx) = async_channel::bounded(config.queue_chunks);
    let (retry_tx, retry_rx) = async_channel::unbounded();
    let state = Arc::new(State {
        config,
        jobs: Mutex::default(),
        idempotency: Mutex::default(),
        queue_tx,
        queue_rx,
        retry_tx,
        retry_rx,
        agents: Mutex::default(),
        next_agent: AtomicU64::new(1),
        pending_notifications: AtomicU64::new(0),
        redispatched: AtomicU64::new(0),
        counters: Mutex::default(),
        shutdown: CancellationToken::new(),
    });
    tokio::spawn(watch_agents(state.clone()));
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
    Ok((ControllerHandle { state }, serving))
}

/// The tarpc service implementation.
#[derive(Clone, Debug)]
struct ControllerServer {
    state: Arc<State>,
}

impl Controller for ControllerServer {
    async fn submit(self, _: Context, job: SubmitJob) -> Result<JobAccepted, WireError> {
        self.state.submit(job).await
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

    async fn cancel(self, _: Context, id: JobId) -> Result<JobStatus, WireError> {
        let job = self.state.job(id)?;
        job.cancel();
        tracing::info!(job = %id, "job cancelled");
        Ok(job.status(0))
    }

    async fn stats(self, _: Context) -> ClusterStats {
        self.state.stats()
    }

    async fn register(self, _: Context, agent: AgentInfo) -> Result<AgentId, WireError> {
        self.state.register(agent).await
    }

    async fn heartbeat(self, _: Context, agent: AgentId) -> Result<(), WireError> {
        match self.state.agents.lock().get_mut(&agent) {
            Some(entry) => {
                entry.last_seen = Instant::now();
                Ok(())
            }
            None => Err(WireError::new(
                ErrorCode::NotFound,
                format!("{agent} is not registered"),
            )),
        }
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

    async fn submit(self: &Arc<Self>, submit: SubmitJob) -> Result<JobAccepted, WireError> {
        if self.shutdown.is_cancelled() {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "controller is shutting down",
            ));
        }
        if submit.is_empty() {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                "the job has no token",
            ));
        }
        if let Some(key) = &submit.idempotency_key {
            if let Some(id) = self.idempotency.lock().get(key).copied() {
                if let Ok(job) = self.job(id) {
                    return Ok(JobAccepted {
                        id,
                        accepted: job.accepted,
                    });
                }
            }
        }
        let size = submit.len() as u64;
        let pending = self.pending_notifications.load(Ordering::Relaxed);
        if pending + size > self.config.max_pending_notifications {
            return Err(WireError::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "{pending} notifications are pending; the limit is {}",
                    self.config.max_pending_notifications
                ),
            ));
        }
        let id = JobId::new();
        let idempotency_key = submit.idempotency_key.clone();
        let (job, specs) = Job::new(id, submit, self.config.chunk_size);
        let job = Arc::new(job);
        self.pending_notifications
            .fetch_add(size, Ordering::Relaxed);
        self.jobs.lock().insert(id, job.clone());
        if let Some(key) = idempotency_key {
            self.idempotency.lock().insert(key, id);
        }
        tracing::info!(job = %id, app = %job.app, tokens = size, chunks = specs.len(), "job accepted");
        // The feeder waits for room in the bounded channel, so a huge job never floods it.
        let tx = self.queue_tx.clone();
        tokio::spawn(async move {
            for spec in specs {
                if tx
                    .send(Work {
                        job: job.clone(),
                        spec,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(JobAccepted { id, accepted: size })
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
            tokio::spawn(dispatch(
                self.clone(),
                id,
                worker,
                client.clone(),
                info.apps.clone(),
                stop.clone(),
                in_flight.clone(),
                chunks_done.clone(),
            ));
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

    fn record(&self, work: &Work, report: &volley_contracts::ChunkReport) {
        let totals = work.job.apply_report(&work.spec, report);
        self.finish_chunk(work, totals);
    }

    fn finish_chunk(&self, work: &Work, totals: job::ChunkTotals) {
        {
            let mut counters = self.counters.lock();
            let entry = counters
                .entry((work.job.app.clone(), work.spec.platform))
                .or_default();
            entry.0 += totals.success;
            entry.1 += totals.error;
        }
        self.pending_notifications
            .fetch_sub(work.spec.len() as u64, Ordering::Relaxed);
        if totals.finished_job {
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
        let mut apps: Vec<AppCounters> = self
            .counters
            .lock()
            .iter()
            .map(|((app, platform), (success, error))| AppCounters {
                app: app.clone(),
                platform: *platform,
                success: *success,
                error: *error,
            })
            .collect();
        apps.sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        let active_jobs = self
            .jobs
            .lock()
            .values()
            .filter(|job| !job.is_finished())
            .count() as u64;
        ClusterStats {
            queue_max: self.config.queue_chunks as u64,
            queue_usage: (self.queue_rx.len() + self.retry_rx.len()) as u64,
            pending_notifications: self.pending_notifications.load(Ordering::Relaxed),
            active_jobs,
            agents,
            apps,
            chunks_redispatched: self.redispatched.load(Ordering::Relaxed),
        }
    }
}

/// One of an agent's `window` workers: pulls chunks from the shared channel and delivers them.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: Arc<State>,
    agent: AgentId,
    worker: u32,
    client: AgentClient,
    apps: Vec<String>,
    stop: CancellationToken,
    in_flight: Arc<AtomicU64>,
    chunks_done: Arc<AtomicU64>,
) {
    loop {
        let work = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            work = state.retry_rx.recv() => match work {
                Ok(work) => work,
                Err(_) => return,
            },
            work = state.queue_rx.recv() => match work {
                Ok(work) => work,
                Err(_) => return,
            },
        };
        work.job.mark_dispatched();
        if work.job.is_cancelled() {
            let totals = work.job.skip_cancelled(&work.spec);
            state.finish_chunk(&work, totals);
            continue;
        }
        if !apps.iter().any(|app| *app == work.job.app) {
            // Another agent holds this app's credentials; give the chunk back and let the
            // others pull it. The pause keeps an agent that serves no queued app from spinning.
            state.requeue(work);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Some(chunk) = work.job.chunk(&work.spec) else {
            tracing::error!(job = %work.job.id, "chunk has no rendering for its platform");
            let totals = work.job.skip_cancelled(&work.spec);
            state.finish_chunk(&work, totals);
            continue;
        };
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + state.config.chunk_timeout;
        in_flight.fetch_add(1, Ordering::Relaxed);
        let result = tokio::select! {
            () = stop.cancelled() => None,
            result = client.deliver(context, chunk) => Some(result),
        };
        in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Some(Ok(Ok(report))) => {
                chunks_done.fetch_add(1, Ordering::Relaxed);
                state.record(&work, &report);
            }
            Some(Ok(Err(error))) => {
                tracing::warn!(agent = %agent, worker, chunk = %work.spec.index, code = ?error.code, %error, "agent refused a chunk");
                state.redispatched.fetch_add(1, Ordering::Relaxed);
                state.requeue(work);
                if error.code == ErrorCode::Unavailable {
                    state.drop_agent(agent, "agent is draining");
                    return;
                }
            }
            Some(Err(error)) => {
                tracing::warn!(agent = %agent, worker, job = %work.job.id, chunk = work.spec.index, %error, "chunk failed on its agent; handing it to another");
                work.job.note_redispatch(&work.spec);
                state.redispatched.fetch_add(1, Ordering::Relaxed);
                state.requeue(work);
                state.drop_agent(agent, "rpc failed");
                return;
            }
            None => {
                work.job.note_redispatch(&work.spec);
                state.redispatched.fetch_add(1, Ordering::Relaxed);
                state.requeue(work);
                return;
            }
        }
    }
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
        let now = job::now_ms();
        let retention_ms = retention.as_millis() as u64;
        let mut expired = Vec::new();
        state.jobs.lock().retain(|id, job| {
            let keep = job
                .finished_ms()
                .is_none_or(|finished| now.saturating_sub(finished) < retention_ms);
            if !keep {
                expired.push(*id);
            }
            keep
        });
        if !expired.is_empty() {
            state
                .idempotency
                .lock()
                .retain(|_, id| !expired.contains(id));
        }
    }
}
