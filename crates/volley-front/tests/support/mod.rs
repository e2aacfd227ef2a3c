//! A fake controller served over real tarpc TCP, a front in front of it, and a raw HTTP/1.1
//! client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::{TcpListener, TcpStream};
use volley_config::Config;
use volley_contracts::{
    AgentId, AgentInfo, AgentStat, AppCounters, ChunkOutcome, ClusterStats, Controller,
    DashboardView, ErrorCode, Held, InvalidTokenPage, JobAccepted, JobId, JobState, JobStatus,
    Links, Platform, Registration, RejectionCount, Renewal, SubmitJob, WireError,
};

pub const SHOP_KEY: &str = "shop-key-0123456789abcdef";
pub const NEWS_KEY: &str = "news-key-0123456789abcdef";
pub const IOS_KEY: &str = "ios-key-0123456789abcdef";
/// An invalid token of the fake controller's dashboard job: never in the dashboard's JSON.
pub const DASHBOARD_SECRET_TOKEN: &str = "secret-device-token-0123456789";

/// Three apps: `shop` (APNs and FCM, the default app), `news` (FCM only), `ios` (APNs only).
pub fn config(extra_front: &str) -> Config {
    Config::from_toml(&format!(
        r#"
        [front]
        default_app = "shop"
        {extra_front}

        [[apps]]
        name = "shop"
        api_keys = ["{SHOP_KEY}"]
        [apps.apns]
        topic = "com.example.shop"
        key_file = "AuthKey.p8"
        key_id = "ABC123DEFG"
        team_id = "TEAM123456"
        [apps.fcm]
        service_account_file = "sa.json"

        [[apps]]
        name = "news"
        api_keys = ["{NEWS_KEY}"]
        [apps.fcm]
        service_account_file = "sa.json"

        [[apps]]
        name = "ios"
        api_keys = ["{IOS_KEY}"]
        [apps.apns]
        topic = "com.example.ios"
        key_file = "AuthKey.p8"
        key_id = "ABC123DEFG"
        team_id = "TEAM123456"
        "#
    ))
    .expect("test configuration parses")
}

/// What the fake controller has seen and holds.
#[derive(Default)]
pub struct Shared {
    pub submitted: Mutex<Vec<SubmitJob>>,
    /// The size of each `submit_many` call.
    pub batches: Mutex<Vec<usize>>,
    pub jobs: Mutex<HashMap<JobId, JobStatus>>,
    /// Set when a submission with idempotency key `hold` arrives; it waits for `release`.
    pub holding: std::sync::atomic::AtomicBool,
    pub release: tokio::sync::Notify,
}

/// A controller that records submissions and answers status from what it recorded.
#[derive(Clone, Default)]
pub struct FakeController {
    pub shared: Arc<Shared>,
}

impl Controller for FakeController {
    async fn submit(self, _: Context, job: SubmitJob) -> Result<JobAccepted, WireError> {
        let key = job.idempotency_key.as_ref().map(|key| key.key.as_str());
        if key == Some("refuse") {
            return Err(WireError::new(
                ErrorCode::ResourceExhausted,
                "too many pending notifications",
            ));
        }
        if key == Some("full") {
            return Err(WireError::new(
                ErrorCode::Overloaded,
                "100 notifications are pending; the limit is 100",
            ));
        }
        if key == Some("hold") {
            self.shared
                .holding
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.shared.release.notified().await;
        }
        let id = JobId::new();
        let accepted = job.len() as u64;
        let status = JobStatus {
            id,
            app: job.app.clone(),
            state: JobState::Queued,
            accepted,
            delivered: 0,
            failed: 0,
            invalid: 0,
            cancelled: 0,
            pending: accepted,
            possible_duplicates: 0,
            invalid_tokens: Vec::new(),
            failures: Vec::new(),
            created_ms: 1,
            finished_ms: None,
            waiting: None,
            rejected: Default::default(),
        };
        self.shared.jobs.lock().unwrap().insert(id, status);
        self.shared.submitted.lock().unwrap().push(job);
        Ok(JobAccepted {
            id,
            accepted,
            replayed: false,
        })
    }

    async fn submit_many(
        self,
        context: Context,
        jobs: Vec<SubmitJob>,
    ) -> Vec<Result<JobAccepted, WireError>> {
        self.shared.batches.lock().unwrap().push(jobs.len());
        let calls = jobs
            .into_iter()
            .map(|job| self.clone().submit(context, job));
        futures::future::join_all(calls).await
    }

    async fn status(self, _: Context, id: JobId, limit: u32) -> Result<JobStatus, WireError> {
        let jobs = self.shared.jobs.lock().unwrap();
        let mut status = jobs
            .get(&id)
            .cloned()
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such job"))?;
        status.invalid_tokens.truncate(limit as usize);
        Ok(status)
    }

    async fn invalid_tokens(
        self,
        _: Context,
        id: JobId,
        offset: u64,
        limit: u32,
    ) -> Result<InvalidTokenPage, WireError> {
        let jobs = self.shared.jobs.lock().unwrap();
        let status = jobs
            .get(&id)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such job"))?;
        let total = status.invalid_tokens.len() as u64;
        let start = offset.min(total) as usize;
        let end = (start + limit as usize).min(status.invalid_tokens.len());
        Ok(InvalidTokenPage {
            app: status.app.clone(),
            total,
            tokens: status.invalid_tokens[start..end].to_vec(),
            next: ((end as u64) < total).then_some(end as u64),
        })
    }

    async fn cancel(self, _: Context, id: JobId) -> Result<JobStatus, WireError> {
        let mut jobs = self.shared.jobs.lock().unwrap();
        let status = jobs
            .get_mut(&id)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, "no such job"))?;
        status.state = JobState::Cancelled;
        status.cancelled = status.pending;
        status.pending = 0;
        Ok(status.clone())
    }

    async fn dashboard(self, context: Context, _jobs: u32) -> Result<DashboardView, WireError> {
        let now_ms = 1_900_000_000_000;
        // One job halfway through, with an invalid token the dashboard must not show.
        let job = JobStatus {
            id: JobId::new(),
            app: "shop".into(),
            state: JobState::Running,
            accepted: 1_000,
            delivered: 400,
            failed: 5,
            invalid: 10,
            cancelled: 0,
            pending: 585,
            possible_duplicates: 0,
            invalid_tokens: vec![volley_contracts::InvalidToken {
                platform: Platform::Fcm,
                token: DASHBOARD_SECRET_TOKEN.into(),
                reason: "UNREGISTERED".into(),
                timestamp_ms: None,
            }],
            failures: vec![volley_contracts::FailureCount {
                platform: Platform::Apns,
                class: "transient".into(),
                reason: "ServiceUnavailable".into(),
                count: 5,
            }],
            created_ms: now_ms - 3_000,
            finished_ms: None,
            waiting: None,
            rejected: Default::default(),
        };
        let sample = |ago: u64, delivered: u64| volley_contracts::RateSample {
            at_ms: now_ms - ago,
            delivered,
            invalid: 0,
            failed: 0,
        };
        Ok(DashboardView {
            now_ms,
            jobs: vec![job],
            history: vec![sample(2_000, 0), sample(1_000, 100), sample(0, 400)],
            stats: self.stats(context).await?,
        })
    }

    async fn stats(self, _: Context) -> Result<ClusterStats, WireError> {
        Ok(ClusterStats {
            queue_usage: 3,
            pending_notifications: 42,
            active_jobs: 1,
            agents: vec![AgentStat {
                id: AgentId(7),
                name: "agent-a".into(),
                addr: "127.0.0.1:1".into(),
                in_flight: 2,
                chunks_done: 10,
                certificate_expires_at: Some(1_900_000_000),
                ops_addr: "127.0.0.1:2".into(),
                paused: Vec::new(),
            }],
            apps: vec![
                AppCounters {
                    app: "shop".into(),
                    platform: Platform::Apns,
                    success: 100,
                    error: 2,
                },
                AppCounters {
                    app: "shop".into(),
                    platform: Platform::Fcm,
                    success: 50,
                    error: 1,
                },
            ],
            chunks_redispatched: 0,
            max_pending_notifications: 1000,
            rejections: vec![RejectionCount {
                reason: "overloaded".into(),
                count: 2,
            }],
            outcomes: Vec::new(),
            job_latency: Vec::new(),
            chunk_latency: Vec::new(),
            webhooks: Vec::new(),
            queues: vec![volley_contracts::QueueStat {
                app: "shop".into(),
                platform: Platform::Fcm,
                chunks: 2,
                notifications: 7,
                in_flight: 0,
                waiting_for_agent: true,
                paused_agents: 0,
                waiting: Some("waiting_for_agent: no agent serves app \"shop\" for fcm".into()),
            }],
            links_refused: 0,
            calls_denied: 0,
            certificate_expires_at: Some(1_900_000_100),
            certificate_reload_failures: 0,
            controller: Default::default(),
        })
    }

    async fn register(self, _: Context, _: AgentInfo) -> Result<Registration, WireError> {
        Err(WireError::new(ErrorCode::Internal, "not in this test"))
    }

    async fn heartbeat(
        self,
        _: Context,
        _: AgentId,
        _: Vec<Held>,
        _: Option<i64>,
    ) -> Result<Renewal, WireError> {
        Err(WireError::new(ErrorCode::Internal, "not in this test"))
    }

    async fn report(self, _: Context, _: AgentId, _: Vec<ChunkOutcome>) -> Result<(), WireError> {
        Err(WireError::new(ErrorCode::Internal, "not in this test"))
    }
}

/// Serves `controller` over tarpc on an ephemeral port.
pub async fn serve_controller(controller: FakeController) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_controller_on(listener, controller));
    addr
}

/// Serves `controller` on `listener`; aborting the task closes every connection too.
pub async fn serve_controller_on(listener: TcpListener, controller: FakeController) {
    let mut connections = tokio::task::JoinSet::new();
    // The front's own tests use plain links to a fake controller; mutual TLS has tests of
    // its own (crates/volley-contracts, bin/volley/tests/links.rs).
    let mut incoming = volley_contracts::listen(listener, Links::Insecure, Default::default(), &[]);
    while let Some((_, transport)) = incoming.next().await {
        let server = controller.clone();
        connections.spawn(
            BaseChannel::with_defaults(transport)
                .execute(server.serve())
                .for_each(|response| async {
                    tokio::spawn(response);
                }),
        );
    }
}

/// A running front with its fake controller.
pub struct Front {
    pub addr: SocketAddr,
    /// The front's ops port (`/metrics`, `/dashboard`).
    pub ops_addr: SocketAddr,
    pub controller: FakeController,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), volley_front::FrontError>>,
}

impl Front {
    /// Starts a front with `config` against a fresh fake controller.
    pub async fn start(mut config: Config) -> Front {
        let controller = FakeController::default();
        let controller_addr = serve_controller(controller.clone()).await;
        config.front.controller = controller_addr.to_string();
        let client = volley_contracts::connect_controller(controller_addr, &Links::Insecure)
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr = ops.local_addr().unwrap();
        let task = tokio::spawn(volley_front::run(
            config,
            listener,
            ops,
            client,
            Links::Insecure,
            async {
                let _ = rx.await;
            },
        ));
        Front {
            addr,
            ops_addr,
            controller,
            shutdown: Some(tx),
            task,
        }
    }

    /// Asks the front to drain.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// The jobs the controller received.
    pub fn submitted(&self) -> Vec<SubmitJob> {
        self.controller.shared.submitted.lock().unwrap().clone()
    }

    /// Sends a request to the front.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        send(self.addr, method, path, key, body).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Reply {
        self.send(Method::POST, path, key, serde_json::to_vec(body).unwrap())
            .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send(Method::GET, path, key, Bytes::new()).await
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not json ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the standard error shape with `status`, `code` and `field`; returns the message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, field: Option<&str>) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        match field {
            Some(field) => assert_eq!(body["error"]["field"], field, "{body}"),
            None => assert!(body["error"].get("field").is_none(), "{body}"),
        }
        body["error"]["message"].as_str().unwrap().to_owned()
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    send_full(addr, method, path, key, None, body).await
}

/// `POST path` with one extra header.
pub async fn send_with_header(
    addr: SocketAddr,
    path: &str,
    key: &str,
    header: (&str, &str),
    body: impl Into<Bytes>,
) -> Reply {
    send_full(addr, Method::POST, path, Some(key), Some(header), body).await
}

async fn send_full(
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    header: Option<(&str, &str)>,
    body: impl Into<Bytes>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A valid-looking APNs device token (64 hex characters).
pub fn apns_token(i: usize) -> String {
    volley_testkit::tokens::apns_token("", i)
}

/// A valid-looking FCM registration token. Not the kit's: this one has the `-`, `_` and `.`
/// that FCM tokens may carry and the kit's do not.
pub fn fcm_token(i: usize) -> String {
    format!("fcm{i}:APA91b-x_y.z")
}

/// The FCM request body of `job` for `token`, parsed.
pub fn fcm_body(job: &SubmitJob, token: &str) -> Value {
    let render = job.fcm.as_ref().expect("job has an fcm render");
    let mut body = render.prefix.to_vec();
    body.extend_from_slice(token.as_bytes());
    body.extend_from_slice(&render.suffix);
    serde_json::from_slice(&body).expect("prefix + token + suffix is json")
}

/// The APNs payload of `job`, parsed.
pub fn apns_payload(job: &SubmitJob) -> Value {
    serde_json::from_slice(&job.apns.as_ref().expect("job has an apns render").payload).unwrap()
}
