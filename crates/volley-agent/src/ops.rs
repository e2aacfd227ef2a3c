//! The agent's ops port: its metrics and its readiness.
//!
//! A broadcast sends some 100,000 notifications a second through one agent, so counting one
//! takes no lock and no allocation: every app's provider (a [`Lane`]) resolves its metric
//! handles once, when the agent starts ([`LaneMetrics`]), and a send only adds to atomics. A
//! failure's reason is a label from a closed set ([`volley_ops::KNOWN_REASONS`], anything
//! else is `other`); its counter is resolved on its first use and kept in the lane's table.
//! What the agent's state knows at scrape time (breakers, connections, chunks being sent,
//! the registration) is read then, by [`Gauges`].
//!
//! Ready once registered with a controller: the credentials were loaded before that (the
//! agent does not start without them).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Map};
use volley_contracts::{AgentId, ChunkAnswer, ErrorCode, Links, WireError};
use volley_ops::encode::{gauge, gauges};
use volley_ops::{AtomicHistogram, Ops, ProcessCollector, KNOWN_REASONS};
use volley_provider::{Outcome, PoolStats};

use crate::deliver::Lane;
use crate::holdings::Holdings;

/// The providers, as the `provider` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    Apns,
    Fcm,
    WebPush,
}

impl Provider {
    fn label(self) -> &'static str {
        match self {
            Provider::Apns => "apns",
            Provider::Fcm => "fcm",
            Provider::WebPush => "webpush",
        }
    }
}

/// Outcome classes, in the order of [`class_index`].
const CLASSES: [&str; 5] = [
    "delivered",
    "invalid_token",
    "transient",
    "credential",
    "bad_request",
];

fn class_index(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Delivered => 0,
        Outcome::InvalidToken { .. } => 1,
        Outcome::Transient { .. } => 2,
        Outcome::Credential { .. } => 3,
        Outcome::BadRequest { .. } => 4,
    }
}

/// Reason labels per failure class: the known reasons, then `other`.
const REASONS: usize = KNOWN_REASONS.len() + 1;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    app: String,
    provider: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    app: String,
    provider: &'static str,
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    app: String,
    provider: &'static str,
    class: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChunkLabels {
    result: &'static str,
}

type Histograms = Family<LaneLabels, AtomicHistogram, fn() -> AtomicHistogram>;

/// The metrics of one app's provider on this agent, resolved once.
#[derive(Debug)]
pub(crate) struct LaneMetrics {
    labels: LaneLabels,
    /// Responses by class, in the order of [`CLASSES`].
    responses: [Counter; 5],
    failures: Family<FailureLabels, Counter>,
    /// The failure counters used so far, by `(class - 1) * REASONS + reason`.
    failure_slots: Box<[OnceLock<Counter>]>,
    retries: Counter,
    breaker_opened: Counter,
    /// The client's connections, streams and request latencies.
    pool: PoolStats,
}

impl LaneMetrics {
    /// Counts a provider's answer to one send.
    pub(crate) fn response(&self, outcome: &Outcome) {
        let class = class_index(outcome);
        self.responses[class].inc();
        let Some(reason) = outcome.reason() else {
            return;
        };
        let reason = KNOWN_REASONS
            .binary_search(&reason.as_str())
            .unwrap_or(KNOWN_REASONS.len());
        self.failure_slots[(class - 1) * REASONS + reason]
            .get_or_init(|| {
                self.failures.get_or_create_owned(&FailureLabels {
                    app: self.labels.app.clone(),
                    provider: self.labels.provider,
                    class: CLASSES[class],
                    reason: KNOWN_REASONS.get(reason).copied().unwrap_or("other"),
                })
            })
            .inc();
    }

    /// Counts a send retried.
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// Counts the breaker opening (from closed, or again after a failed probe).
    pub(crate) fn breaker_opened(&self) {
        self.breaker_opened.inc();
    }

    /// The counts the lane's client keeps.
    pub(crate) fn pool(&self) -> &PoolStats {
        &self.pool
    }

    /// Answers counted so far, every class (unit tests).
    #[cfg(test)]
    pub(crate) fn responses_so_far(&self) -> u64 {
        self.responses.iter().map(Counter::get).sum()
    }

    /// Retries counted so far (unit tests).
    #[cfg(test)]
    pub(crate) fn retries_so_far(&self) -> u64 {
        self.retries.get()
    }

    /// Metrics registered nowhere (unit tests of the delivery).
    #[cfg(test)]
    pub(crate) fn detached() -> LaneMetrics {
        Metrics::new().lane("test", Provider::Apns)
    }
}

/// Chunks finished, by result.
#[derive(Debug, Clone)]
pub(crate) struct ChunkResults {
    done: Counter,
    paused: Counter,
    lease_lost: Counter,
    failed: Counter,
}

impl ChunkResults {
    /// Counts a chunk's answer.
    pub(crate) fn finished(&self, answer: &Result<ChunkAnswer, WireError>) {
        match answer {
            // Part of it handed back: counted with the chunks handed back whole.
            Ok(answer) if !answer.returned.is_empty() => &self.paused,
            Ok(_) => &self.done,
            Err(error) if error.code == ErrorCode::ResourceExhausted => &self.paused,
            Err(error) if error.code == ErrorCode::LeaseLost => &self.lease_lost,
            Err(_) => &self.failed,
        }
        .inc();
    }
}

/// Tokens of the chunks being sent, counted per chunk rather than per notification.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokensInFlight(Gauge);

impl TokensInFlight {
    /// Counts `tokens` in flight until the guard is dropped (the chunk finished or stopped).
    pub(crate) fn hold(&self, tokens: usize) -> TokensHeld<'_> {
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        self.0.inc_by(tokens);
        TokensHeld {
            gauge: &self.0,
            tokens,
        }
    }
}

/// A chunk's tokens counted in flight.
pub(crate) struct TokensHeld<'a> {
    gauge: &'a Gauge,
    tokens: i64,
}

impl Drop for TokensHeld<'_> {
    fn drop(&mut self) {
        self.gauge.dec_by(self.tokens);
    }
}

/// The agent's metrics while it starts: families to resolve the lanes' handles from.
pub(crate) struct Metrics {
    registry: Registry,
    latency: Histograms,
    responses: Family<ResponseLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    retries: Family<LaneLabels, Counter>,
    breaker_opened: Family<LaneLabels, Counter>,
    pub(crate) chunks: ChunkResults,
    pub(crate) tokens_in_flight: TokensInFlight,
}

impl Metrics {
    /// Registers the agent's metrics.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector::default()));
        let latency = Histograms::new_with_constructor(AtomicHistogram::latency as fn() -> _);
        registry.register(
            "volley_agent_provider_request_seconds",
            "Time from sending a request to APNs, FCM or a Web Push service to the end of its answer (or its timeout), waits for a connection or a stream included",
            latency.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "volley_agent_provider_responses",
            "Answers to sends by outcome class: delivered, invalid_token, transient (transport failures included), credential, bad_request",
            responses.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "volley_agent_provider_failures",
            "Failed sends by outcome class and the provider's or transport's reason (unknown reasons are other)",
            failures.clone(),
        );
        let retries = Family::<LaneLabels, Counter>::default();
        registry.register(
            "volley_agent_retries",
            "Sends retried after a transient failure",
            retries.clone(),
        );
        let breaker_opened = Family::<LaneLabels, Counter>::default();
        registry.register(
            "volley_agent_breaker_opened",
            "Times an app's provider breaker opened, from closed or again after a failed probe",
            breaker_opened.clone(),
        );
        let chunk_family = Family::<ChunkLabels, Counter>::default();
        registry.register(
            "volley_agent_chunks",
            "Chunks finished by result: done (reported), paused (breaker open: refused or handed back), lease_lost, failed",
            chunk_family.clone(),
        );
        let chunk = |result| chunk_family.get_or_create_owned(&ChunkLabels { result });
        let chunks = ChunkResults {
            done: chunk("done"),
            paused: chunk("paused"),
            lease_lost: chunk("lease_lost"),
            failed: chunk("failed"),
        };
        let tokens_in_flight = TokensInFlight::default();
        registry.register(
            "volley_agent_tokens_in_flight",
            "Tokens of the chunks being sent",
            tokens_in_flight.0.clone(),
        );
        Metrics {
            registry,
            latency,
            responses,
            failures,
            retries,
            breaker_opened,
            chunks,
            tokens_in_flight,
        }
    }

    /// The handles of `app`'s `provider`, resolved now; its client takes
    /// [`LaneMetrics::pool`] as its pool counts.
    pub(crate) fn lane(&self, app: &str, provider: Provider) -> LaneMetrics {
        let labels = LaneLabels {
            app: app.to_owned(),
            provider: provider.label(),
        };
        let latency = self.latency.get_or_create_owned(&labels);
        let response = |class| {
            self.responses.get_or_create_owned(&ResponseLabels {
                app: app.to_owned(),
                provider: provider.label(),
                class,
            })
        };
        LaneMetrics {
            responses: CLASSES.map(response),
            failures: self.failures.clone(),
            failure_slots: (0..(CLASSES.len() - 1) * REASONS)
                .map(|_| OnceLock::new())
                .collect(),
            retries: self.retries.get_or_create_owned(&labels),
            breaker_opened: self.breaker_opened.get_or_create_owned(&labels),
            pool: PoolStats::observed(Arc::new(move |took| latency.observe(took))),
            labels,
        }
    }

    /// The ops port over these metrics and what only the running agent knows: ready while
    /// registered with a controller, until it drains.
    pub(crate) fn into_ops(
        mut self,
        gauges: Gauges,
        apps: Vec<String>,
        draining: Arc<AtomicBool>,
    ) -> Ops {
        let registration = gauges.registration.clone();
        self.registry.register_collector(Box::new(gauges));
        Ops::new(
            "agent",
            self.registry,
            Arc::new(move || {
                let readiness = if draining.load(Relaxed) {
                    Err("draining".to_owned())
                } else {
                    registration.readiness(&apps)
                };
                Box::pin(async move { readiness })
            }),
        )
    }
}

/// Whether the agent is registered with a controller, and with which.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    state: Mutex<Option<(AgentId, String)>>,
    /// Registrations so far, to tell "not yet" from "lost".
    registrations: AtomicU64,
}

impl Registration {
    /// Registered as `agent` with the controller at `controller`.
    pub(crate) fn registered(&self, agent: AgentId, controller: &str) {
        *self.state.lock() = Some((agent, controller.to_owned()));
        self.registrations.fetch_add(1, Relaxed);
    }

    /// The registration is over (the link broke or the controller forgot this agent).
    pub(crate) fn lost(&self) {
        *self.state.lock() = None;
    }

    fn is_registered(&self) -> bool {
        self.state.lock().is_some()
    }

    fn readiness(&self, apps: &[String]) -> volley_ops::Readiness {
        match &*self.state.lock() {
            Some((agent, controller)) => {
                let mut detail = Map::new();
                detail.insert("registered".into(), true.into());
                detail.insert("agent_id".into(), agent.0.into());
                detail.insert("controller".into(), controller.as_str().into());
                detail.insert("apps".into(), json!(apps));
                Ok(detail)
            }
            None if self.registrations.load(Relaxed) == 0 => {
                Err("not registered with the controller yet".into())
            }
            None => Err("lost the controller; registering again".into()),
        }
    }
}

/// What the agent's metrics read at scrape time.
#[derive(Debug)]
pub(crate) struct Gauges {
    pub(crate) lanes: Vec<Arc<Lane>>,
    pub(crate) holdings: Arc<Holdings>,
    pub(crate) registration: Arc<Registration>,
    pub(crate) links: Links,
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = tokio::time::Instant::now();
        let lanes = || {
            self.lanes
                .iter()
                .map(|lane| (lane.metrics.labels.clone(), lane))
        };
        gauges(
            &mut encoder,
            "volley_agent_breaker_state",
            "State of an app's provider breaker: 0 closed, 1 half-open, 2 open",
            lanes().map(|(labels, lane)| (labels, lane.breaker.lock().gauge(now))),
        )?;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        gauges(
            &mut encoder,
            "volley_agent_connections",
            "HTTP/2 connections open to an app's provider (Web Push: summed over push services)",
            lanes().map(|(labels, lane)| (labels, count(lane.metrics.pool.connections()))),
        )?;
        gauges(
            &mut encoder,
            "volley_agent_streams_in_flight",
            "HTTP/2 requests sent to an app's provider and not answered yet",
            lanes().map(|(labels, lane)| (labels, count(lane.metrics.pool.streams_in_flight()))),
        )?;
        gauge(
            &mut encoder,
            "volley_agent_chunks_in_flight",
            "Chunks being sent",
            count(self.holdings.sending()),
        )?;
        gauge(
            &mut encoder,
            "volley_agent_chunks_held",
            "Chunks held until the controller releases them: being sent, or finished and not yet on the controller's disk",
            count(self.holdings.len()),
        )?;
        gauge(
            &mut encoder,
            "volley_agent_registered",
            "1 while the agent is registered with a controller, 0 otherwise",
            i64::from(self.registration.is_registered()),
        )?;
        if let Some(not_after) = self.links.not_after() {
            gauge(
                &mut encoder,
                "volley_agent_certificate_expiry_timestamp_seconds",
                "When the agent's link certificate expires, in seconds since the Unix epoch",
                not_after,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley_provider::Reason;

    fn render(metrics: Metrics) -> String {
        metrics.into_ops_for_tests().render()
    }

    impl Metrics {
        fn into_ops_for_tests(self) -> Ops {
            Ops::new(
                "agent",
                self.registry,
                Arc::new(|| Box::pin(async { Ok(Map::new()) })),
            )
        }
    }

    #[test]
    fn answers_count_by_class_and_failures_by_closed_reason() {
        let metrics = Metrics::new();
        let lane = metrics.lane("shop", Provider::Fcm);
        lane.response(&Outcome::Delivered);
        lane.response(&Outcome::Delivered);
        for _ in 0..3 {
            lane.response(&Outcome::InvalidToken {
                reason: Reason::known("UNREGISTERED"),
                timestamp_ms: None,
            });
        }
        lane.response(&Outcome::BadRequest {
            reason: Reason::raw("SomethingNew: with free text"),
        });
        lane.retried();
        lane.breaker_opened();
        lane.pool()
            .observe_request(std::time::Duration::from_millis(3));
        let text = render(metrics);
        for line in [
            r#"volley_agent_provider_responses_total{app="shop",provider="fcm",class="delivered"} 2"#,
            r#"volley_agent_provider_responses_total{app="shop",provider="fcm",class="invalid_token"} 3"#,
            r#"volley_agent_provider_responses_total{app="shop",provider="fcm",class="credential"} 0"#,
            r#"volley_agent_provider_failures_total{app="shop",provider="fcm",class="invalid_token",reason="UNREGISTERED"} 3"#,
            r#"volley_agent_provider_failures_total{app="shop",provider="fcm",class="bad_request",reason="other"} 1"#,
            r#"volley_agent_retries_total{app="shop",provider="fcm"} 1"#,
            r#"volley_agent_breaker_opened_total{app="shop",provider="fcm"} 1"#,
            r#"volley_agent_provider_request_seconds_count{app="shop",provider="fcm"} 1"#,
            r#"volley_agent_chunks_total{result="done"} 0"#,
            "volley_agent_tokens_in_flight 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("free text"), "{text}");
    }

    #[test]
    fn tokens_in_flight_are_given_back_when_a_chunk_stops() {
        let tokens = TokensInFlight::default();
        let first = tokens.hold(500);
        {
            let _second = tokens.hold(20);
            assert_eq!(tokens.0.get(), 520);
        }
        drop(first);
        assert_eq!(tokens.0.get(), 0);
    }

    #[test]
    fn readiness_says_whether_the_agent_is_registered() {
        let registration = Registration::default();
        let apps = vec!["shop".to_owned()];
        assert_eq!(
            registration.readiness(&apps),
            Err("not registered with the controller yet".into())
        );
        registration.registered(AgentId(7), "127.0.0.1:7000");
        let detail = registration.readiness(&apps).unwrap();
        assert_eq!(
            serde_json::Value::Object(detail),
            json!({"registered": true, "agent_id": 7, "controller": "127.0.0.1:7000", "apps": ["shop"]})
        );
        registration.lost();
        assert!(registration.readiness(&apps).unwrap_err().contains("lost"));
    }
}
