//! A controller alone, for the controller's own integration tests: a controller on its own
//! thread, the test app `shop`, an agent scripted by the test, and small RPC helpers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::sync::Semaphore;
use volley_config::Config;
use volley_contracts::{
    Agent, AgentInfo, ApnsRender, Chunk, ChunkAnswer, ChunkReport, ControllerClient, Fingerprint,
    Held, IdempotencyKey, JobAccepted, JobId, JobStatus, Links, SubmitJob, TokenList, WireError,
};

use crate::role::{spawn_controller, RoleHandle};

/// How long a test waits for the controller to get somewhere.
pub const WAIT: Duration = Duration::from_secs(20);

/// An agent that calls every token starting with `dead` unregistered and delivers the rest.
/// It records how many chunks each call carried and when, answers chunks with the scripted
/// `refusals` first, and with a `gate` holds its first call until the gate gets a permit.
#[derive(Clone, Default)]
pub struct TestAgent {
    /// Holds the first `deliver` call until it gets a permit.
    pub gate: Option<Arc<Semaphore>>,
    /// The number of chunks of each `deliver` call, in order.
    pub calls: Arc<Mutex<Vec<usize>>>,
    /// When each `deliver` call arrived, in order.
    pub call_times: Arc<Mutex<Vec<std::time::Instant>>>,
    /// Answers for the next chunks, one each, before any is delivered.
    pub refusals: Arc<Mutex<std::collections::VecDeque<WireError>>>,
    /// Every chunk handed to it, with the epoch it came with, in order.
    pub received: Arc<Mutex<Vec<Held>>>,
    /// The `positions` of every chunk handed to it (empty: a whole chunk), in order.
    pub positions: Arc<Mutex<Vec<Vec<u32>>>>,
    /// For the next chunks, after the refusals, one each: deliver the first `n` tokens and
    /// hand back the rest, asking the controller to pause the app that long (as an agent
    /// whose circuit opened part-way does); a chunk that may not be handed back
    /// (`Chunk::hand_back` false) uses up its entry and is delivered whole.
    pub hand_backs: Arc<Mutex<std::collections::VecDeque<(usize, Duration)>>>,
}

impl Agent for TestAgent {
    async fn deliver(self, _: Context, chunks: Vec<Chunk>) -> Vec<Result<ChunkAnswer, WireError>> {
        let first = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(chunks.len());
            calls.len() == 1
        };
        self.call_times
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        self.received
            .lock()
            .unwrap()
            .extend(chunks.iter().map(|chunk| Held {
                chunk: chunk.id,
                epoch: chunk.epoch,
            }));
        self.positions
            .lock()
            .unwrap()
            .extend(chunks.iter().map(|chunk| chunk.positions.clone()));
        if let Some(gate) = self.gate.as_ref().filter(|_| first) {
            let _ = gate.acquire().await.unwrap();
        }
        let mut refusals = self.refusals.lock().unwrap();
        let mut hand_backs = self.hand_backs.lock().unwrap();
        chunks
            .iter()
            .map(|chunk| {
                if let Some(refusal) = refusals.pop_front() {
                    return Err(refusal);
                }
                // A chunk the controller says not to hand back is delivered whole.
                let (sent, pause) = hand_backs
                    .pop_front()
                    .filter(|_| chunk.hand_back)
                    .unwrap_or((chunk.tokens.len(), Duration::ZERO));
                let sent = sent.min(chunk.tokens.len());
                let position = |index: usize| match chunk.positions.get(index) {
                    Some(&position) => position,
                    None => index as u32,
                };
                Ok(ChunkAnswer {
                    report: report(chunk, 0..sent, position),
                    returned: (sent..chunk.tokens.len()).map(position).collect(),
                    pause,
                    positions: chunk.positions.clone(),
                })
            })
            .collect()
    }
}

/// The report of the tokens `sent` of `chunk`, numbered by `position`.
fn report(
    chunk: &Chunk,
    sent: std::ops::Range<usize>,
    position: impl Fn(usize) -> u32,
) -> ChunkReport {
    let mut report = ChunkReport::default();
    for index in sent {
        if chunk.tokens.get(index).unwrap_or("").starts_with("dead") {
            report.invalid.push((
                position(index),
                "Unregistered".into(),
                Some(1_700_000_000_000),
            ));
        } else {
            report.delivered += 1;
        }
    }
    report
}

/// Serves `agent` over tarpc on an ephemeral port; returns its address.
pub async fn serve_agent(agent: TestAgent) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut incoming = volley_contracts::listen(listener, Links::Insecure, Arc::default(), &[]);
        while let Some((_, transport)) = incoming.next().await {
            tokio::spawn(
                BaseChannel::with_defaults(transport)
                    .execute(agent.clone().serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    }),
            );
        }
    });
    addr
}

/// One app, `shop`, with APNs (the fake agent never reads its credentials).
pub fn shop_config() -> Config {
    Config::from_toml(
        r#"
        [[apps]]
        name = "shop"
        [apps.apns]
        topic = "com.example.shop"
        key_file = "AuthKey.p8"
        key_id = "ABC123DEFG"
        team_id = "TEAM123456"
        "#,
    )
    .unwrap()
}

/// Registers an agent serving `shop` on every platform with `window` chunks in flight.
pub async fn register(controller: &ControllerClient, agent_addr: String, window: u32) {
    register_serving(
        controller,
        agent_addr,
        window,
        &volley_contracts::Platform::ALL,
    )
    .await;
}

/// Registers an agent declaring `shop` on `platforms` with `window` chunks in flight.
pub async fn register_serving(
    controller: &ControllerClient,
    agent_addr: String,
    window: u32,
    platforms: &[volley_contracts::Platform],
) {
    controller
        .register(
            tarpc::context::current(),
            AgentInfo {
                name: "fake".into(),
                addr: agent_addr,
                apps: vec![volley_contracts::ServedApp {
                    app: "shop".into(),
                    platforms: platforms.to_vec(),
                }],
                window,
                ops_addr: String::new(),
            },
        )
        .await
        .unwrap()
        .unwrap();
}

/// A running controller of app `shop`, with a client.
pub struct Running {
    /// A client of the controller.
    pub client: ControllerClient,
    controller: RoleHandle,
}

impl Running {
    /// Asks the controller to drain and waits for its thread to end.
    pub fn stop(self) -> anyhow::Result<()> {
        self.controller.stop()
    }
}

/// Starts a controller of app `shop` keeping its store in `dir`.
pub async fn start_controller(dir: &std::path::Path) -> Running {
    start_controller_with(dir, |_| {}).await
}

/// Starts a controller of app `shop` keeping its store in `dir`, its configuration changed by
/// `tweak` first.
pub async fn start_controller_with(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> Running {
    let mut config = shop_config();
    config.controller.data_dir = dir.to_path_buf();
    tweak(&mut config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // Plain links: one test client plays front and agent at once (the roles' checks have
    // their own tests over mutual TLS).
    let controller = spawn_controller(
        config,
        listener,
        crate::role::ops_listener().unwrap(),
        Links::Insecure,
    )
    .unwrap();
    let client = volley_contracts::connect_controller(addr, &Links::Insecure)
        .await
        .unwrap();
    Running { client, controller }
}

/// An APNs alert rendering with an empty `aps`, as a front would hand it over.
pub fn apns_render() -> ApnsRender {
    ApnsRender {
        payload: Bytes::from_static(b"{\"aps\":{}}"),
        push_type: "alert".into(),
        priority: 10,
        expiration: None,
        collapse_id: None,
        topic: None,
        apns_id: None,
    }
}

/// A job of app `shop` for APNs `tokens`; with a key, its fingerprint is that of the tokens
/// (as a front's would be of its request).
pub fn job(tokens: &[String], idempotency_key: Option<&str>) -> SubmitJob {
    SubmitJob {
        app: "shop".into(),
        apns: Some(apns_render()),
        fcm: None,
        apns_tokens: tokens.iter().collect::<TokenList>(),
        fcm_tokens: TokenList::default(),
        webpush: None,
        webpush_tokens: Default::default(),
        idempotency_key: idempotency_key.map(|key| IdempotencyKey::new(key, fingerprint(tokens))),
        rejected: Default::default(),
    }
}

/// A stand-in for a front's request fingerprint: the same tokens give the same one.
pub fn fingerprint(tokens: &[String]) -> Fingerprint {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    tokens.hash(&mut hasher);
    let word = hasher.finish().to_le_bytes();
    let mut bytes = [0; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&word);
    }
    Fingerprint(bytes)
}

/// Submits a job of app `shop` for APNs `tokens`; panics unless it is accepted.
pub async fn submit(controller: &ControllerClient, tokens: &[String]) -> JobAccepted {
    controller
        .submit(tarpc::context::current(), job(tokens, None))
        .await
        .unwrap()
        .unwrap()
}

/// A job's status, straight from the controller.
pub async fn job_status(controller: &ControllerClient, id: JobId) -> JobStatus {
    controller
        .status(tarpc::context::current(), id, 0)
        .await
        .unwrap()
        .unwrap()
}

/// Waits until the job is final (within [`WAIT`]) and returns its status, checked balanced:
/// `accepted = delivered + invalid + failed + cancelled`, nothing pending.
pub async fn wait_final(controller: &ControllerClient, id: JobId) -> JobStatus {
    crate::wait::wait_until(WAIT, "the job to be final", || async move {
        job_status(controller, id).await.finished_ms.is_some()
    })
    .await
    .unwrap();
    let status = job_status(controller, id).await;
    assert_eq!(
        status.accepted,
        status.delivered + status.invalid + status.failed + status.cancelled,
        "{status:?}"
    );
    assert_eq!(status.pending, 0, "{status:?}");
    status
}
