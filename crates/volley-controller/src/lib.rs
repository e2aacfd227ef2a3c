//! Volley's controller.
//!
//! Fronts submit jobs over tarpc; the controller stores each job, splits it into chunks and
//! hands each chunk to whichever agent is free. Its parts, each with its own state, are
//! wired together in [`start`]:
//!
//! - **admission** (`admission.rs`): whether a submission may become a job (draining, empty,
//!   the pending limit, an app and platform no agent ever declared) and the room it takes;
//! - **job table** (`jobs.rs`, the job itself in `job.rs`): jobs by id, idempotency keys,
//!   finished jobs kept for their retention;
//! - **scheduler** (`scheduler.rs`): the one shared request channel every agent's dispatcher
//!   pulls from, fed fairly: a queue per (app, platform), a turn per job inside it, deficit
//!   round-robin across queues, and queues an agent cannot send, paused, or already runs its
//!   share of skipped;
//! - **agent registry** (`registry.rs`): registered agents, heartbeats, the apps and
//!   platforms agents have declared;
//! - **dispatchers** (`dispatcher.rs`): `window` workers per agent that pull, lease, call
//!   `deliver` and settle each chunk (recorded, or handed back to its own queue);
//! - **leases** (`leases.rs`), **tallies** (`tally.rs`), the durable **store** (`store.rs`, a
//!   leaf) and the invalid-token **webhooks** (`webhook.rs`);
//! - **orphans** (`orphans.rs`): chunks found leased in the store at start-up wait a lease time
//!   for the agents still sending them to claim them, instead of going out again.
//!
//! ```text
//! submit ──> admission ──> store ──> job table ──> scheduler: queue per (app, platform)
//!                                                      │  deficit round-robin
//!                       agent A dispatcher: window workers <─┤
//!                       agent B dispatcher: window workers <─┘ ──> deliver ──> record / hand back
//! ```

mod admission;
mod clock;
mod dispatcher;
mod job;
mod jobs;
mod leases;
mod ops;
mod orphans;
mod postgres;
mod registry;
mod scheduler;
mod store;
mod tally;
mod webhook;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio_util::sync::CancellationToken;
use volley_config::{Config, ControllerConfig, StoreKind};
use volley_contracts::tls::NodeRole;
use volley_contracts::{
    AgentId, AgentInfo, ChunkFailure, ChunkOutcome, ChunkReport, ClusterStats, Controller,
    DashboardView, ErrorCode, Held, InvalidTokenPage, JobAccepted, JobId, JobState, JobStatus,
    Links, Peer, Registration, Renewal, ServedApp, SubmitJob, WireError,
};

use crate::admission::{Admission, Admissions, Admitted, Rejection};
use crate::clock::now_ms;
use crate::dispatcher::Dispatcher;
use crate::job::Job;
use crate::jobs::{Forgotten, JobTable};
use crate::leases::Leases;
use crate::registry::{Registry, Touch};
use crate::scheduler::{Scheduler, Work};
use crate::store::{KeyRecord, Recovered, Store, Write};
use crate::tally::{ChunkTally, History, Tallies};

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

/// The controller's parts, shared by the RPC handlers, the dispatchers and the background
/// tasks.
pub(crate) struct Core {
    pub(crate) config: ControllerConfig,
    pub(crate) store: Store,
    admissions: Admissions,
    jobs: JobTable,
    pub(crate) scheduler: Scheduler,
    registry: Registry,
    pub(crate) leases: Leases,
    tallies: Tallies,
    /// The outcome totals of the last ten minutes, a sample a second (the dashboard's rates).
    history: History,
    /// Invalid-token webhooks.
    outbox: webhook::Outbox,
    /// Chunks out with agents right now (a draining controller waits for them).
    pub(crate) out: AtomicU64,
    /// The counters and histograms of the ops port (shared with [`Serving`]: they outlive a
    /// leadership).
    pub(crate) metrics: ops::Metrics,
    /// Cancelled on the first shutdown signal: no new job, no new hand-out.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the controller stops: its background tasks end.
    shutdown: CancellationToken,
    /// Cancelled when the calls out with agents are to be abandoned (a drained stop). Not when
    /// the controller steps down: agents stop a chunk whose call is cancelled on a live link,
    /// so those calls run to their end, and the new leader claims the chunks meanwhile.
    calls: CancellationToken,
    /// Until when this controller surely leads (PostgreSQL store: its last renewal plus the
    /// leadership's lease); `None`: always (the embedded store). Past it, leases are not
    /// expired: a controller that was paused must not cancel calls whose chunks a new leader
    /// may have claimed since.
    leading_until: parking_lot::Mutex<Option<std::time::Instant>>,
    /// How links to agents are secured.
    links: Links,
    /// What `stats` says of this controller: its store, address and term.
    identity: volley_contracts::ControllerStat,
    /// Links refused at the handshake (shared with [`Serving`]: it outlives a leadership).
    links_refused: Arc<AtomicU64>,
    /// Calls refused for the caller's role (likewise).
    calls_denied: Arc<AtomicU64>,
}

/// What serves the controller's port whatever its role: the leader's parts while this
/// controller leads (always, with the embedded store), and the counters that outlive a
/// leadership. A standby answers every call with [`ErrorCode::NotLeader`], naming the leader.
struct Serving {
    current: ArcSwapOption<Core>,
    /// The leader's address, as this standby last read it.
    leader: ArcSwapOption<String>,
    links_refused: Arc<AtomicU64>,
    calls_denied: Arc<AtomicU64>,
    /// `redb` or `postgres`.
    store: &'static str,
    /// Where this controller stands when it does not lead (for `/readyz`).
    phase: parking_lot::Mutex<Phase>,
    metrics: ops::Metrics,
}

impl Serving {
    fn new(store: &'static str) -> Serving {
        Serving {
            current: ArcSwapOption::empty(),
            leader: ArcSwapOption::empty(),
            links_refused: Arc::default(),
            calls_denied: Arc::default(),
            store,
            phase: parking_lot::Mutex::new(Phase::Starting),
            metrics: ops::Metrics::default(),
        }
    }

    fn set_phase(&self, phase: Phase) {
        *self.phase.lock() = phase;
    }
}

/// Where a controller that does not lead (or not yet) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its store is not open yet.
    Starting,
    /// A standby (PostgreSQL store), and whether it last reached the database.
    Standby { reachable: bool },
    /// It took the leadership and loads the store.
    Loading,
}

/// Runs a controller on `listener` until `shutdown` resolves.
///
/// It reads `config.controller` and, from `config.apps`, each app's invalid-token webhook.
/// With the embedded store it leads from the start; with `store = "postgres"` it waits as a
/// standby until it can lead, leads until it stops or another controller takes over, and then
/// waits again.
///
/// Its ops port (`/metrics`, `/healthz`, `/readyz`) is served on `ops` until it stops.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    ops: tokio::net::TcpListener,
    links: Links,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let local: SocketAddr = listener.local_addr()?;
    let stopping = CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    let serving = Arc::new(Serving::new(match config.controller.store {
        StoreKind::Redb => "redb",
        StoreKind::Postgres => "postgres",
    }));
    let apps: Option<HashSet<String>> =
        (!config.apps.is_empty()).then(|| config.apps.iter().map(|app| app.name.clone()).collect());
    let ops_port = ops::ops(serving.clone(), links.clone(), apps);
    // Up until the controller has stopped: while it drains, `/readyz` says so.
    let ops_stop = CancellationToken::new();
    // An early error stops it too.
    let _ops_guard = ops_stop.clone().drop_guard();
    let ops_served = tokio::spawn(volley_ops::serve(
        ops,
        "controller",
        ops_port.router(),
        ops_stop.clone().cancelled_owned(),
    ));
    let result = match config.controller.store {
        StoreKind::Redb => {
            let (store, recovered) = Store::open(
                &config.controller.data_dir,
                config.controller.fsync,
                serving.metrics.store.clone(),
            )?;
            let identity = volley_contracts::ControllerStat {
                store: "redb".into(),
                address: config
                    .controller
                    .advertise
                    .clone()
                    .unwrap_or_else(|| local.to_string()),
                term: None,
            };
            let core = Core::start(&config, store, recovered, links.clone(), &serving, identity)?;
            serving.current.store(Some(core.clone()));
            let serve = tokio::spawn(serve(listener, links, serving.clone(), local));
            stopping.cancelled().await;
            core.drain().await;
            serve.abort();
            Ok(())
        }
        StoreKind::Postgres => {
            let db = postgres::Database::from_config(&config.controller)?;
            let address = config
                .controller
                .advertise
                .clone()
                .unwrap_or_else(|| local.to_string());
            let leadership =
                postgres::Leadership::open(db.clone(), address, config.controller.failover_timeout)
                    .await?;
            tracing::info!(database = %db, "controller store: PostgreSQL");
            let serve = tokio::spawn(serve(listener, links.clone(), serving.clone(), local));
            let result =
                lead_or_stand_by(&config, db, leadership, links, &serving, &stopping).await;
            serve.abort();
            result
        }
    };
    ops_stop.cancel();
    let _ = ops_served.await;
    tracing::info!("controller stopped");
    result
}

/// Serves tarpc links on `listener`: each call goes to the leader's parts, or is answered
/// "not leader".
async fn serve(
    listener: tokio::net::TcpListener,
    links: Links,
    serving: Arc<Serving>,
    local: SocketAddr,
) {
    tracing::info!(listen = %local, "controller listening");
    let incoming = volley_contracts::listen(
        listener,
        links,
        serving.links_refused.clone(),
        volley_contracts::CONTROLLER_LARGE_CALLS,
    );
    incoming
        .for_each(move |(peer, transport)| {
            let server = ControllerServer {
                serving: serving.clone(),
                peer: Arc::new(peer),
            };
            async move {
                tracing::debug!(peer = %server.peer, "tarpc connection");
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(
                    channel
                        .execute(server.serve())
                        .for_each(|response| async move {
                            tokio::spawn(response);
                        }),
                );
            }
        })
        .await;
}

/// The PostgreSQL store's life: a standby until this controller can take the leadership,
/// the leader until it stops (then it drains and resigns, and a standby takes over at once)
/// or finds another controller leads (fenced, or displaced while it could not renew: it
/// steps down, drops everything it held in memory and waits again).
async fn lead_or_stand_by(
    config: &Config,
    db: postgres::Database,
    mut leadership: postgres::Leadership,
    links: Links,
    serving: &Serving,
    stopping: &CancellationToken,
) -> Result<(), ControllerError> {
    let mut shown_leader: Option<String> = None;
    // The database's absence is logged once per outage.
    let mut unreachable = false;
    loop {
        let term = loop {
            match leadership.try_lead().await {
                Ok(Some(term)) => break term,
                Ok(None) => {
                    unreachable = false;
                    serving.set_phase(Phase::Standby { reachable: true });
                    let leader = leadership.leader().await.ok().flatten();
                    if leader != shown_leader {
                        tracing::info!(
                            leader = leader.as_deref().unwrap_or("none"),
                            "standby: another controller leads"
                        );
                        shown_leader = leader.clone();
                    }
                    serving.leader.store(leader.map(Arc::new));
                }
                Err(error) => {
                    serving.set_phase(Phase::Standby { reachable: false });
                    if !unreachable {
                        tracing::warn!(%error, "standby: cannot reach the database; trying again");
                        unreachable = true;
                    }
                }
            }
            tokio::select! {
                () = stopping.cancelled() => return Ok(()),
                () = tokio::time::sleep(leadership.poll_every()) => {}
            }
        };
        tracing::info!(term, "this controller leads now; loading the store");
        serving.set_phase(Phase::Loading);
        let fenced = CancellationToken::new();
        let opening = {
            let (db, fenced, fsync) = (db.clone(), fenced.clone(), config.controller.fsync);
            let metrics = serving.metrics.store.clone();
            tokio::task::spawn_blocking(move || postgres::open(db, term, fsync, fenced, metrics))
        };
        // Loading a large store takes longer than a lease: renewed meanwhile (a loss shows
        // at the first renewal after, or as a fenced commit).
        tokio::pin!(opening);
        let mut renew = tokio::time::interval(leadership.renew_every());
        let opened = loop {
            tokio::select! {
                opened = &mut opening => break opened,
                _ = renew.tick() => {
                    if let Err(error) = leadership.renew(term).await {
                        tracing::warn!(%error, term, "cannot renew the leadership while loading");
                    }
                }
            }
        };
        let (store, recovered) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                tracing::error!(%error, term, "cannot load the store; giving the leadership up");
                let _ = leadership.resign(term).await;
                tokio::select! {
                    () = stopping.cancelled() => return Ok(()),
                    () = tokio::time::sleep(leadership.renew_every()) => {}
                }
                continue;
            }
            Err(error) => {
                return Err(ControllerError::Store(store::StoreError::Db(
                    error.to_string(),
                )))
            }
        };
        let identity = volley_contracts::ControllerStat {
            store: "postgres".into(),
            address: leadership.address().to_owned(),
            term: Some(term),
        };
        let core = Core::start(config, store, recovered, links.clone(), serving, identity)?;
        *core.leading_until.lock() = Some(std::time::Instant::now() + leadership.lease());
        serving.leader.store(None);
        serving.current.store(Some(core.clone()));
        shown_leader = None;
        let mut renew = tokio::time::interval(leadership.renew_every());
        let mut draining = false;
        let drained = CancellationToken::new();
        let why = loop {
            tokio::select! {
                () = stopping.cancelled(), if !draining => {
                    // Drained while the leadership is renewed: the chunks out report here.
                    draining = true;
                    let (core, drained) = (core.clone(), drained.clone());
                    tokio::spawn(async move {
                        core.drain().await;
                        drained.cancel();
                    });
                }
                () = drained.cancelled() => break None,
                () = fenced.cancelled() => break Some("a commit found another controller's term"),
                renewing = renew.tick() => match leadership.renew(term).await {
                    Ok(true) => {
                        // Counted from before the renewal was sent: on the safe side.
                        *core.leading_until.lock() = Some(renewing.into_std() + leadership.lease());
                    }
                    Ok(false) => break Some("another controller took the leadership"),
                    Err(error) => {
                        tracing::warn!(%error, term, "cannot renew the leadership; if another controller takes it, this one's writes are refused");
                    }
                },
            }
        };
        serving.current.store(None);
        serving.set_phase(Phase::Standby { reachable: true });
        let Some(why) = why else {
            if let Err(error) = leadership.resign(term).await {
                tracing::warn!(%error, "could not resign the leadership; a standby takes over when it ends");
            }
            return Ok(());
        };
        tracing::warn!(
            term,
            why,
            "stepping down: this controller is a standby again"
        );
        core.abandon().await;
        if stopping.is_cancelled() {
            return Ok(());
        }
    }
}

/// The tarpc service implementation, one per link: it knows who is calling.
#[derive(Clone)]
struct ControllerServer {
    serving: Arc<Serving>,
    peer: Arc<Peer>,
}

impl ControllerServer {
    /// The leader's parts; "not leader", naming the leader, on a standby.
    fn core(&self) -> Result<Arc<Core>, WireError> {
        self.serving.current.load_full().ok_or_else(|| {
            WireError::not_leader(
                self.serving
                    .leader
                    .load_full()
                    .map(|leader| (*leader).clone()),
            )
        })
    }

    /// Refuses `call` unless the caller's certificate says it is a `role`.
    fn allow(&self, role: NodeRole, call: &str) -> Result<(), WireError> {
        if self.peer.is(role) {
            return Ok(());
        }
        self.serving.calls_denied.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %self.peer, call, "call refused: only a {role} may make it");
        Err(WireError::new(
            ErrorCode::PermissionDenied,
            format!(
                "{call} is for a {role}; this link's certificate names a {}",
                self.peer.role.map_or("node", NodeRole::as_str)
            ),
        ))
    }
}

/// Runs `work` to its end on its own task, whatever becomes of the request: tarpc drops a
/// handler whose caller went away or whose deadline passed, and a submission or cancel
/// dropped between its store write and what follows would leave a job stored but not queued,
/// its idempotency key claimed for good, or its chunks still queued.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, WireError> {
    tokio::spawn(work)
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "the request's task failed"))
}

impl Controller for ControllerServer {
    async fn submit(self, _: Context, job: SubmitJob) -> Result<JobAccepted, WireError> {
        self.allow(NodeRole::Front, "submit")?;
        let core = self.core()?;
        let mut answers = to_the_end(async move { core.submit_many(vec![job]).await }).await?;
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
        let count = jobs.len();
        if let Err(denied) = self.allow(NodeRole::Front, "submit_many") {
            return vec![Err(denied); count];
        }
        let core = match self.core() {
            Ok(core) => core,
            Err(standby) => return vec![Err(standby); count],
        };
        to_the_end(async move { core.submit_many(jobs).await })
            .await
            .unwrap_or_else(|error| vec![Err(error); count])
    }

    async fn status(
        self,
        _: Context,
        id: JobId,
        invalid_limit: u32,
    ) -> Result<JobStatus, WireError> {
        self.allow(NodeRole::Front, "status")?;
        self.core()?.status(id, invalid_limit)
    }

    async fn invalid_tokens(
        self,
        _: Context,
        id: JobId,
        offset: u64,
        limit: u32,
    ) -> Result<InvalidTokenPage, WireError> {
        self.allow(NodeRole::Front, "invalid_tokens")?;
        Ok(self.core()?.jobs.get(id)?.invalid_page(offset, limit))
    }

    async fn cancel(self, _: Context, id: JobId) -> Result<JobStatus, WireError> {
        self.allow(NodeRole::Front, "cancel")?;
        let core = self.core()?;
        to_the_end(async move { core.cancel(id).await }).await?
    }

    async fn stats(self, _: Context) -> Result<ClusterStats, WireError> {
        self.allow(NodeRole::Front, "stats")?;
        Ok(self.core()?.stats())
    }

    async fn dashboard(self, _: Context, jobs: u32) -> Result<DashboardView, WireError> {
        self.allow(NodeRole::Front, "dashboard")?;
        Ok(self.core()?.dashboard(jobs as usize))
    }

    async fn register(self, _: Context, agent: AgentInfo) -> Result<Registration, WireError> {
        self.allow(NodeRole::Agent, "register")?;
        let peer_name = self.peer.role.map(|_| self.peer.name.clone());
        let core = self.core()?;
        let id = core.register(agent, peer_name).await?;
        Ok(Registration {
            id,
            lease_ms: core.config.lease_time.as_millis() as u64,
        })
    }

    async fn heartbeat(
        self,
        _: Context,
        agent: AgentId,
        held: Vec<Held>,
        certificate_expires_at: Option<i64>,
    ) -> Result<Renewal, WireError> {
        self.allow(NodeRole::Agent, "heartbeat")?;
        let peer_name = self.peer.role.map(|_| self.peer.name.as_str());
        let core = self.core()?;
        let touch = core
            .registry
            .touch(agent, peer_name, certificate_expires_at);
        self.speaks_for(agent, touch, "heartbeat")?;
        let renewed = core.leases.renew(agent, &held);
        let renewal = Renewal {
            released: Vec::new(),
            claimed: renewed.adopted,
        };
        Ok(core.answer_held(agent, renewed.unleased, renewal).await)
    }

    async fn report(
        self,
        _: Context,
        agent: AgentId,
        reports: Vec<ChunkOutcome>,
    ) -> Result<(), WireError> {
        self.allow(NodeRole::Agent, "report")?;
        let peer_name = self.peer.role.map(|_| self.peer.name.as_str());
        let core = self.core()?;
        let touch = core.registry.check(agent, peer_name);
        self.speaks_for(agent, touch, "report")?;
        // Settled on a task of its own: a report taken from the leases and then dropped with
        // the call would leave its chunk with nobody to settle it.
        to_the_end(async move { core.take_reports(agent, reports).await }).await?
    }
}

impl ControllerServer {
    /// Refuses an agent's call unless the agent is registered and this link's certificate is
    /// the one it registered with (another agent's certificate could renew its leases, or
    /// settle its chunks).
    fn speaks_for(&self, agent: AgentId, touch: Touch, call: &str) -> Result<(), WireError> {
        match touch {
            Touch::Renewed => Ok(()),
            Touch::Unknown => Err(WireError::new(
                ErrorCode::NotFound,
                format!("{agent} is not registered"),
            )),
            Touch::OtherPeer => {
                self.serving.calls_denied.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %self.peer, %agent, call, "call refused: the agent registered with another certificate");
                Err(WireError::new(
                    ErrorCode::PermissionDenied,
                    format!("{agent} registered with another certificate"),
                ))
            }
        }
    }
}

impl Core {
    /// Builds the controller's parts on an open store, restores what it holds, starts the
    /// background tasks.
    fn start(
        config: &Config,
        store: Store,
        recovered: Recovered,
        links: Links,
        serving: &Serving,
        identity: volley_contracts::ControllerStat,
    ) -> Result<Arc<Core>, ControllerError> {
        let webhooks = config
            .apps
            .iter()
            .filter_map(|app| Some((app.name.clone(), app.webhook.clone()?)))
            .collect();
        let outbox = webhook::Outbox::new(webhooks).map_err(ControllerError::Webhook)?;
        // The apps agents may serve and jobs may be for; none listed: any.
        let apps: Option<HashSet<String>> = (!config.apps.is_empty())
            .then(|| config.apps.iter().map(|app| app.name.clone()).collect());
        let config = config.controller.clone();
        let shutdown = CancellationToken::new();
        let core = Arc::new(Core {
            admissions: Admissions::new(&config, apps),
            jobs: JobTable::new(recovered.keys, config.max_finished_jobs),
            scheduler: Scheduler::new(config.chunk_size),
            registry: Registry::new(recovered.declared),
            leases: Leases::new(config.lease_time),
            tallies: Tallies::default(),
            history: History::default(),
            outbox,
            store,
            out: AtomicU64::new(0),
            metrics: serving.metrics.clone(),
            draining: shutdown.child_token(),
            shutdown,
            calls: CancellationToken::new(),
            leading_until: parking_lot::Mutex::new(None),
            config,
            links,
            identity,
            links_refused: serving.links_refused.clone(),
            calls_denied: serving.calls_denied.clone(),
        });
        core.restore(recovered.jobs);
        core.outbox.restore(&core.store, recovered.webhook);
        core.outbox
            .spawn_senders(core.store.clone(), core.shutdown.clone());
        tokio::spawn(watch_agents(core.clone()));
        tokio::spawn(watch_leases(core.clone()));
        tokio::spawn(expire_jobs(core.clone()));
        tokio::spawn(sample_totals(core.clone()));
        Ok(core)
    }

    /// Drains: takes no new job, hands out no new chunk, waits for the chunks out with agents
    /// to report or their leases to expire (whatever is unfinished is in the store), commits
    /// what was recorded meanwhile and closes the store.
    async fn drain(&self) {
        tracing::info!("controller draining");
        self.draining.cancel();
        let grace = self.config.shutdown_grace;
        let waited = tokio::time::timeout(grace, async {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while self.out.load(Ordering::Relaxed) > 0 {
                tick.tick().await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                chunks = self.out.load(Ordering::Relaxed),
                "grace period over with chunks still out; they resume after restart"
            );
        }
        // Chunk reports recorded during the drain are committed before the process may exit,
        // and the store is closed (its directory free for the next controller) when this
        // returns.
        if let Err(error) = self.store.write(Write::Close).await {
            tracing::error!(%error, "store flush failed");
        }
        self.shutdown.cancel();
        self.calls.cancel();
    }

    /// Steps down at once: another controller leads. Nothing new goes out, the background
    /// tasks end and the store (fenced already, or about to be) is closed. The calls out with
    /// agents are left to end by themselves: their agents keep sending and report to the new
    /// leader, which claims the chunks (cancelling the calls on their live links would stop
    /// them).
    async fn abandon(&self) {
        self.shutdown.cancel();
        let _ = self.store.write(Write::Close).await;
    }

    /// Accepts a batch of submissions with one store commit; answers each in order. A job
    /// is answered `Ok` only once it is on disk.
    async fn submit_many(
        self: &Arc<Self>,
        submits: Vec<SubmitJob>,
    ) -> Vec<Result<JobAccepted, WireError>> {
        let now = now_ms();
        let draining = self.draining.is_cancelled();
        let mut answers: Vec<Option<Result<JobAccepted, WireError>>> =
            Vec::with_capacity(submits.len());
        let mut admitted: Vec<Admitted> = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        // A key repeated within the batch finds the first submission's claim: in use (409),
        // as it would from another call.
        for (slot, submit) in submits.into_iter().enumerate() {
            let admission =
                self.admissions
                    .admit(slot, submit, now, draining, &self.jobs, &self.registry);
            match admission {
                Ok(Admission::Known(accepted)) => answers.push(Some(Ok(accepted))),
                Ok(Admission::New(job, write)) => {
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
                        replayed: false,
                    })
                })
                .collect(),
            Err(error) => {
                let size: u64 = admitted.iter().map(|job| job.size).sum();
                self.admissions.release(size);
                for job in &admitted {
                    if let Some(key) = &job.submit.idempotency_key {
                        self.jobs.release_key(&job.submit.app, &key.key);
                    }
                }
                let error = error.to_string();
                admitted
                    .iter()
                    .map(|_| {
                        Err(self.admissions.reject(
                            Rejection::Store,
                            ErrorCode::Unavailable,
                            error.clone(),
                        ))
                    })
                    .collect()
            }
        };
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

    /// Makes a job that is on disk known and queues its chunks.
    fn start_job(&self, admitted: Admitted, now: u64) {
        let Admitted {
            id, size, submit, ..
        } = admitted;
        // Kept for the key's record: the job takes the key alone.
        let fingerprint = submit
            .idempotency_key
            .as_ref()
            .and_then(|key| key.fingerprint);
        let (job, specs) = Job::new(id, submit, self.config.chunk_size, now);
        let job = Arc::new(job);
        // One line per large job, when it finishes; the front logs its acceptance.
        tracing::debug!(job = %id, app = %job.app, tokens = size, chunks = specs.len(), "job accepted");
        self.jobs.insert(job.clone());
        if let Some(key) = &job.idempotency_key {
            let record = KeyRecord {
                job: id,
                at_ms: now,
                accepted: size,
                fingerprint,
            };
            self.jobs.commit_key(&job.app, key, record);
        }
        self.scheduler
            .push_job(&job, specs.into_iter().map(|spec| (spec, 0)).collect());
    }

    /// Takes back the jobs found in the store at start-up. Chunks that were leased wait for
    /// their agents' claims (`orphans.rs`); the others are queued.
    fn restore(self: &Arc<Self>, jobs: Vec<store::StoredJob>) {
        let mut resumed = 0;
        let mut finished = Vec::new();
        let mut orphans = Vec::new();
        for stored in jobs {
            let (job, unfinished) = Job::restore(stored);
            if let Some(at) = job.finished_ms() {
                finished.push((job.id, at));
            }
            self.admissions.restore(unfinished.tokens());
            let (queued, leased) = (unfinished.queued.len(), unfinished.leased.len());
            if queued + leased > 0 {
                resumed += 1;
                tracing::info!(job = %job.id, app = %job.app, chunks = queued + leased, leased, "resuming job");
            }
            let job = Arc::new(job);
            self.jobs.insert(job.clone());
            if job.is_cancelled() {
                // Cancelled before the restart: what was not done is cancelled now, what was
                // out too (its agent is told to drop it at its next heartbeat).
                for (spec, epoch) in unfinished.all() {
                    self.skip_cancelled(&Work {
                        job: job.clone(),
                        spec,
                        epoch,
                    });
                }
                continue;
            }
            self.scheduler.push_job(&job, unfinished.queued);
            orphans.extend(unfinished.leased.into_iter().map(|(spec, epoch)| Work {
                job: job.clone(),
                spec,
                epoch,
            }));
        }
        if resumed > 0 {
            tracing::info!(jobs = resumed, "unfinished jobs resumed from the store");
        }
        self.await_claims(orphans);
        let forgotten = self.jobs.restore_finished(finished);
        self.forget(forgotten);
    }

    /// A job's status, with why it is not moving if it is not.
    fn status(&self, id: JobId, invalid_limit: u32) -> Result<JobStatus, WireError> {
        let job = self.jobs.get(id)?;
        Ok(self.status_of(&job, invalid_limit))
    }

    /// [`Core::status`] of a job at hand.
    fn status_of(&self, job: &Job, invalid_limit: u32) -> JobStatus {
        let mut status = job.status(invalid_limit as usize);
        if status.finished_ms.is_none() {
            status.waiting = job
                .unfinished_platforms()
                .into_iter()
                .find_map(|platform| self.scheduler.waiting_reason(&job.app, platform));
        }
        status
    }

    /// Cancels a job: from now on none of its chunks goes out (the dispatchers check before
    /// each call, and a chunk handed back is not queued again); what is still queued is
    /// finished as cancelled at once; chunks out with agents finish as they report. Answers
    /// the status reached: `cancelled` when nothing was out, `cancelling` until the chunks
    /// out have reported. A finished job is left as it is.
    async fn cancel(&self, id: JobId) -> Result<JobStatus, WireError> {
        let job = self.jobs.get(id)?;
        if job.cancel() != job::Cancel::Now {
            return self.status(id, 0);
        }
        // Whether a chunk went out cannot change once the job is cancelled.
        let was = if job.was_dispatched() {
            JobState::Running
        } else {
            JobState::Queued
        };
        self.jobs.moved(Some(was), Some(JobState::Cancelling));
        for work in self.scheduler.remove_job(id) {
            self.skip_cancelled(&work);
        }
        // Chunks out at a restart and not claimed yet are not sent by this controller: they
        // are cancelled like queued ones (an agent still sending one drops it at its next
        // heartbeat). Adopted ones are out, and finish as they report.
        for work in self.leases.unclaimed_of(id) {
            self.skip_cancelled(&work);
        }
        // The chunks' records ride on this commit: after a restart the job is cancelled and
        // its unsent chunks are counted so.
        self.store
            .write(Write::Cancelled {
                id,
                at_ms: now_ms(),
            })
            .await
            .map_err(|error| WireError::new(ErrorCode::Internal, error.to_string()))?;
        let status = self.status(id, 0)?;
        tracing::info!(job = %id, state = status.state.as_str(), out = status.pending, "job cancelled");
        Ok(status)
    }

    /// Gives a chunk that did not finish back to its queue, or, when its job is cancelled,
    /// finishes it as cancelled instead. A cancel that comes between the check and the
    /// hand-back has already swept the queue: the chunk is taken out again.
    pub(crate) fn hand_back(&self, work: Work, pause: Option<(AgentId, tokio::time::Instant)>) {
        if work.job.is_cancelled() {
            self.skip_cancelled(&work);
            return;
        }
        let job = work.job.clone();
        self.metrics.chunks_handed_back.inc();
        self.scheduler.hand_back(work, pause);
        if job.is_cancelled() {
            for work in self.scheduler.remove_job(job.id) {
                self.skip_cancelled(&work);
            }
        }
    }

    /// Registers an agent: records what it declared, starts its dispatcher.
    async fn register(
        self: &Arc<Self>,
        mut info: AgentInfo,
        peer_name: Option<String>,
    ) -> Result<AgentId, WireError> {
        // An agent's window decides how many calls the controller keeps out with it: bounded
        // by this configuration, whatever the agent declares.
        let max_window = self.config.max_agent_window.max(1);
        if info.window > max_window {
            tracing::warn!(name = %info.name, declared = info.window, max_window, "agent window capped (controller.max_agent_window)");
            info.window = max_window;
        }
        if let Some(apps) = self.admissions.known_apps() {
            let (known, unknown): (Vec<ServedApp>, Vec<ServedApp>) = std::mem::take(&mut info.apps)
                .into_iter()
                .partition(|served| apps.contains(&served.app));
            if !unknown.is_empty() {
                let unknown: Vec<&str> = unknown.iter().map(|served| served.app.as_str()).collect();
                if known.is_empty() {
                    return Err(WireError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "none of the apps agent {} declares ({}) is in the controller's configuration ([[apps]])",
                            info.name,
                            unknown.join(", ")
                        ),
                    ));
                }
                tracing::warn!(name = %info.name, apps = ?unknown, "agent declares apps the controller's configuration does not list; none of their chunks go to it");
            }
            info.apps = known;
        }
        let client = volley_contracts::connect_agent(info.addr.as_str(), &self.links)
            .await
            .map_err(|error| {
                WireError::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach agent at {}: {error}", info.addr),
                )
            })?;
        let stop = self.calls.child_token();
        let window = info.window.max(1);
        let (id, counters, fresh) = self.registry.insert(info.clone(), peer_name, stop.clone());
        let served: Vec<String> = info.apps.iter().map(ToString::to_string).collect();
        tracing::info!(agent = %id, name = %info.name, addr = %info.addr, window, apps = ?served, "agent registered");
        // Known to the scheduler as soon as to admission: a job accepted for what it declared
        // is never reported as waiting for an agent in between.
        self.scheduler.add_agent(id, info, window);
        if !fresh.is_empty() {
            let writes = fresh
                .into_iter()
                .map(|(app, platform)| Write::Declared { app, platform })
                .collect();
            if let Err(error) = self.store.write(Write::all(writes)).await {
                tracing::error!(%error, "cannot record what the agent declared");
            }
        }
        Dispatcher {
            core: self.clone(),
            agent: id,
            client,
            stop,
            counters,
        }
        .spawn(window);
        Ok(id)
    }

    pub(crate) fn drop_agent(&self, id: AgentId, why: &str) {
        if let Some(entry) = self.registry.remove(id) {
            self.scheduler.remove_agent(id);
            tracing::warn!(agent = %id, name = %entry.info.name, why, "agent dropped");
        }
    }

    /// Records a chunk's final report: the job's progress, the store, the webhook outbox and
    /// the app's counters (with the chunk's round trip, `took_ms`, when it went out).
    ///
    /// `report` covers the tokens that went out (in chunk positions); for a part, the report
    /// of the rest is added, so that the store gets the chunk's whole report, once.
    pub(crate) fn record(&self, work: &Work, report: &ChunkReport, took_ms: Option<u64>) {
        let whole;
        let report = match &work.spec.part {
            Some(part) => {
                whole = merged(&part.done, report);
                &whole
            }
            None => report,
        };
        let report = balanced(report, work.spec.len());
        let Some(totals) = work.job.apply_report(&work.spec, &report) else {
            return;
        };
        // The job's end, as the job recorded it, when this was its last chunk.
        let finished_ms = totals
            .finished_job
            .then(|| work.job.finished_ms().unwrap_or_else(now_ms));
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
                at_ms: finished_ms.unwrap_or_else(now_ms),
                report: bytes,
                webhook,
            });
        }
        // Queued after the report's write, so an acknowledgement is always applied after it.
        self.outbox.push(entries);
        self.tallies.count(ChunkTally {
            app: &work.job.app,
            platform: work.spec.platform,
            report: &report,
            success: totals.success,
            error: totals.error,
            took_ms,
            job_ms: finished_ms.map(|at| at.saturating_sub(work.job.created_ms)),
        });
        self.admissions.release(work.spec.len() as u64);
        if let Some(finished_ms) = finished_ms {
            self.finish_job(&work.job, finished_ms);
        }
    }

    /// Finishes a chunk of a cancelled job without sending it.
    pub(crate) fn skip_cancelled(&self, work: &Work) {
        let report = ChunkReport {
            cancelled: work.spec.outgoing() as u32,
            ..ChunkReport::default()
        };
        self.record(work, &report, None);
    }

    /// Finishes a chunk that cannot be sent: every notification fails with `class`/`reason`.
    pub(crate) fn fail_chunk(&self, work: &Work, class: &str, reason: &str) {
        let report = dispatcher::failed_report(work.spec.outgoing_positions(), class, reason);
        self.record(work, &report, None);
    }

    /// A job's last chunk is recorded: it joins the finished jobs kept, and is logged.
    fn finish_job(&self, job: &Job, finished_ms: u64) {
        let forgotten = self.jobs.finished(job.id, finished_ms, job.live_state());
        self.forget(forgotten);
        if job.accepted as usize >= volley_contracts::LOG_JOBS_FROM {
            let status = job.status(0);
            tracing::info!(
                job = %job.id,
                app = %job.app,
                accepted = job.accepted,
                took_ms = finished_ms.saturating_sub(status.created_ms),
                delivered = status.delivered,
                invalid = status.invalid,
                failed = status.failed,
                cancelled = status.cancelled,
                possible_duplicates = status.possible_duplicates,
                "job finished"
            );
        } else {
            tracing::debug!(job = %job.id, app = %job.app, "job finished");
        }
    }

    /// Forgets jobs in the store (their status is gone from memory already).
    fn forget(&self, (ids, keys): Forgotten) {
        if !ids.is_empty() {
            self.store.write_later(Write::Forget { ids, keys });
        }
    }

    /// What the live dashboard shows: the jobs not final yet, newest first, then those
    /// finished in the last [`DASHBOARD_RECENT`], newest first, `jobs` at most in all (and
    /// [`DASHBOARD_MAX_JOBS`]); the history of the outcome totals; the stats.
    fn dashboard(&self, jobs: usize) -> DashboardView {
        let limit = jobs.min(DASHBOARD_MAX_JOBS);
        let now = now_ms();
        let mut listed = self.jobs.newest_unfinished(limit);
        let since = now.saturating_sub(DASHBOARD_RECENT.as_millis() as u64);
        listed.extend(self.jobs.recently_finished(since, limit - listed.len()));
        DashboardView {
            now_ms: now,
            jobs: listed.iter().map(|job| self.status_of(job, 0)).collect(),
            history: self.history.samples(),
            stats: self.stats(),
        }
    }

    /// Whether this leader's lease in the database ran out without a renewal (PostgreSQL
    /// store): another controller may lead by now.
    fn leadership_lapsed(&self) -> bool {
        self.leading_until
            .lock()
            .is_some_and(|until| std::time::Instant::now() > until)
    }

    fn stats(&self) -> ClusterStats {
        let tallies = self.tallies.stats();
        let queued = self.scheduler.queued() as u64;
        let mut agents = self.registry.stats();
        let mut pauses = self.scheduler.pauses();
        for agent in &mut agents {
            agent.paused = pauses.remove(&agent.id).unwrap_or_default();
        }
        ClusterStats {
            queue_usage: queued,
            pending_notifications: self.admissions.pending(),
            // A counter, not a walk over the jobs: finished jobs are retained for a day, and
            // `/metrics` scrapes call this.
            active_jobs: self.jobs.active(),
            agents,
            apps: tallies.apps,
            chunks_redispatched: self.metrics.chunks_redispatched.get(),
            max_pending_notifications: self.admissions.max_pending(),
            rejections: self.admissions.rejections(),
            outcomes: tallies.outcomes,
            job_latency: tallies.job_latency,
            chunk_latency: tallies.chunk_latency,
            webhooks: self.outbox.stats(),
            queues: self.scheduler.stats(),
            links_refused: self.links_refused.load(Ordering::Relaxed),
            calls_denied: self.calls_denied.load(Ordering::Relaxed),
            certificate_expires_at: self.links.not_after(),
            certificate_reload_failures: self.links.reload_failures(),
            controller: self.identity.clone(),
        }
    }
}

/// Most jobs a dashboard call lists.
const DASHBOARD_MAX_JOBS: usize = 200;

/// How long a finished job stays on the dashboard.
const DASHBOARD_RECENT: Duration = Duration::from_secs(600);

/// Samples the outcome totals once a second for the dashboard's history, while this
/// controller leads.
async fn sample_totals(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        core.history.push(core.tallies.totals(now_ms()));
    }
}

/// Expires leases that their agents stopped renewing.
async fn watch_leases(core: Arc<Core>) {
    let mut tick = tokio::time::interval(core.leases.tick());
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = std::time::Instant::now();
        if core.leading_until.lock().is_some_and(|until| now > until) {
            // Maybe not the leader any more (paused, or cut off from the database): leave
            // the leases to whoever leads; a renewal or a fence settles which.
            continue;
        }
        let expired = core.leases.expire(now);
        core.metrics.leases_expired.inc_by(expired);
    }
}

/// The report with its counts made to cover the chunk exactly: an agent that reports fewer
/// outcomes than tokens (a bug) gets the rest counted as failed (`internal`, `unreported`),
/// one that reports more has its delivered count cut, so that every job keeps
/// `accepted = delivered + invalid + failed + cancelled`.
/// Two reports of one chunk's tokens (a part's and the rest's) as one.
pub(crate) fn merged(one: &ChunkReport, other: &ChunkReport) -> ChunkReport {
    let mut both = one.clone();
    both.delivered += other.delivered;
    both.invalid.extend(other.invalid.iter().cloned());
    both.failed.extend(other.failed.iter().cloned());
    both.possible_duplicates += other.possible_duplicates;
    both.cancelled += other.cancelled;
    both
}

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
async fn watch_agents(core: Arc<Core>) {
    let timeout = core.config.heartbeat_timeout;
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for id in core.registry.silent(timeout) {
            core.drop_agent(id, "missed heartbeats");
        }
    }
}

/// Forgets finished jobs after the retention period.
async fn expire_jobs(core: Arc<Core>) {
    let retention = core.config.job_retention;
    let mut tick =
        tokio::time::interval(Duration::from_secs(60).min(retention.max(Duration::from_secs(1))));
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let horizon = now_ms().saturating_sub(retention.as_millis() as u64);
        let forgotten = core.jobs.expire(horizon);
        core.forget(forgotten);
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
