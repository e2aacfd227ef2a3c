//! The controller's ops port: its metrics and its readiness.
//!
//! The controller owns the cluster's delivery metrics: the outcomes of every notification,
//! the queues, the jobs, the agents it sees (the fronts and agents export only what they
//! do themselves). Counters bumped on hot paths (leases, hand-backs, store commits) are
//! atomics registered once, in [`Metrics`], which outlives a leadership; what the leader's
//! parts know (queues, tallies, agents) is read at scrape time by [`ClusterCollector`] from
//! the same [`ClusterStats`] the `stats` call answers. A standby exports its own gauges
//! (leadership, links, certificate) and the process's.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use volley_contracts::{ClusterStats, Histogram, LatencyStat, Links, LATENCY_BUCKETS_MS};
use volley_ops::encode::{counter, counters, gauge, gauges};
use volley_ops::{reason_label, Ops, ProcessCollector};

use crate::admission::Rejection;
use crate::jobs::LIVE_STATES;
use crate::store::StoreMetrics;
use crate::{Phase, Serving};

/// The controller's counters and histograms updated as things happen: shared by every
/// leadership of this process (a standby that takes over keeps counting from where the
/// last one stopped, as Prometheus expects of a counter).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    /// Chunks leased to an agent for a `deliver` call.
    pub(crate) chunks_leased: Counter,
    /// Leases that lapsed: their agent stopped renewing them.
    pub(crate) leases_expired: Counter,
    /// Chunks given back to their queue (paused app, lost agent, refusal, store error).
    pub(crate) chunks_handed_back: Counter,
    /// Chunks handed to another agent after theirs was lost.
    pub(crate) chunks_redispatched: Counter,
    /// The store's commits.
    pub(crate) store: StoreMetrics,
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "volley_controller_chunks_leased",
                "Chunks leased to an agent for a deliver call",
                &self.chunks_leased,
            ),
            (
                "volley_controller_leases_expired",
                "Chunk leases that lapsed because their agent stopped renewing them",
                &self.leases_expired,
            ),
            (
                "volley_controller_chunks_handed_back",
                "Chunks given back to their queue (app paused on the agent, agent lost or draining, refusal, store error)",
                &self.chunks_handed_back,
            ),
            (
                "volley_controller_chunks_redispatched",
                "Chunks handed to another agent after theirs was lost (their tokens count as possible duplicates)",
                &self.chunks_redispatched,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "volley_controller_store_commit_seconds",
            "Time a store commit took (one transaction, and its sync with fsync on)",
            self.store.commit.clone(),
        );
        registry.register(
            "volley_controller_store_commit_writes",
            "Writes per store commit (group commit: the writes queued meanwhile share one)",
            self.store.writes.clone(),
        );
    }
}

/// The controller's `/metrics`, `/healthz` and `/readyz`. Ready while it leads with its
/// store open (and not draining), or stands by with the database reachable.
pub(crate) fn ops(serving: Arc<Serving>, links: Links, apps: Option<HashSet<String>>) -> Ops {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::default()));
    serving.metrics.register(&mut registry);
    registry.register_collector(Box::new(ClusterCollector {
        serving: serving.clone(),
        links,
        apps,
    }));
    Ops::new(
        "controller",
        registry,
        Arc::new(move || {
            let serving = serving.clone();
            Box::pin(async move { readiness(&serving) })
        }),
    )
}

/// Whether the controller is ready, and what it is.
fn readiness(serving: &Serving) -> Result<Map<String, Value>, String> {
    let mut detail = Map::new();
    detail.insert("store".into(), serving.store.into());
    if let Some(core) = serving.current.load_full() {
        if core.draining.is_cancelled() {
            return Err("draining: shutting down".into());
        }
        if core.leadership_lapsed() {
            // Cut off from the database past its lease: a standby may lead by now.
            return Err("leadership lapsed: it cannot be renewed in the database".into());
        }
        detail.insert("state".into(), "leader".into());
        detail.insert("term".into(), core.identity.term.into());
        return Ok(detail);
    }
    match *serving.phase.lock() {
        Phase::Starting => Err("starting: the store is not open yet".into()),
        Phase::Loading => Err("loading the store to take the leadership".into()),
        Phase::Standby { reachable: false } => Err("standby: the database is unreachable".into()),
        Phase::Standby { reachable: true } => {
            detail.insert("state".into(), "standby".into());
            detail.insert("term".into(), Value::Null);
            let leader = serving.leader.load_full().map(|leader| (*leader).clone());
            detail.insert("leader".into(), leader.into());
            Ok(detail)
        }
    }
}

/// Reads what only the leader's parts know at scrape time.
struct ClusterCollector {
    serving: Arc<Serving>,
    links: Links,
    /// The apps of the configuration (`None`: none listed, any app is served).
    apps: Option<HashSet<String>>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl ClusterCollector {
    /// An app as a label: one of the configuration's, else `other` (when the configuration
    /// lists none, the app names jobs carry).
    fn app<'a>(&self, app: &'a str) -> &'a str {
        match &self.apps {
            Some(apps) if !apps.contains(app) => "other",
            _ => app,
        }
    }
}

/// The outcome classes of the providers and of the controller itself; anything else is
/// `other`.
fn class_label(class: &str) -> &'static str {
    const CLASSES: [&str; 7] = [
        "",
        "bad_request",
        "credential",
        "delivered",
        "internal",
        "invalid_token",
        "transient",
    ];
    CLASSES
        .iter()
        .find(|known| **known == class)
        .copied()
        .unwrap_or("other")
}

/// A family of one-value series: `(labels, value)` each.
fn family<'l, const N: usize>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: impl IntoIterator<Item = ([(&'static str, &'l str); N], u64)>,
) -> Result<(), std::fmt::Error> {
    // Apps outside the configuration share the label `other`: their series are summed, so
    // that no label set is written twice.
    let mut merged: BTreeMap<[(&'static str, &'l str); N], u64> = BTreeMap::new();
    for (labels, value) in series {
        *merged.entry(labels).or_default() += value;
    }
    match metric_type {
        MetricType::Counter => counters(encoder, name, help, merged),
        _ => gauges(
            encoder,
            name,
            help,
            merged
                .into_iter()
                .map(|(labels, value)| (labels, i64::try_from(value).unwrap_or(i64::MAX))),
        ),
    }
}

/// Latency histograms over [`LATENCY_BUCKETS_MS`], exposed in seconds.
fn latencies(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    stats: &[LatencyStat],
    labels: impl Fn(&LatencyStat) -> Vec<(&'static str, String)>,
) -> Result<(), std::fmt::Error> {
    // Apps outside the configuration share the label `other`: their histograms are summed.
    let mut merged: BTreeMap<Vec<(&'static str, String)>, Histogram> = BTreeMap::new();
    for stat in stats {
        let into = merged.entry(labels(stat)).or_default();
        let from = &stat.histogram;
        into.buckets
            .resize(from.buckets.len().max(into.buckets.len()), 0);
        for (sum, n) in into.buckets.iter_mut().zip(&from.buckets) {
            *sum += n;
        }
        into.sum_ms += from.sum_ms;
        into.count += from.count;
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in &merged {
        // Per bucket, not cumulative: the encoder accumulates.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_MS
            .iter()
            .map(|bound| *bound as f64 / 1000.0)
            .chain([f64::INFINITY])
            .zip(histogram.buckets.iter().copied())
            .collect();
        let mut series = family.encode_family(labels)?;
        series.encode_histogram::<NoLabelSet>(
            histogram.sum_ms as f64 / 1000.0,
            histogram.count,
            &buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let core = self.serving.current.load_full();
        let e = &mut encoder;
        gauge(
            e,
            "volley_controller_leader",
            "1 while this controller leads, 0 while it stands by",
            i64::from(core.as_ref().is_some_and(|core| !core.leadership_lapsed())),
        )?;
        counter(
            e,
            "volley_controller_links_refused",
            "Links to the controller refused at the TLS handshake (no certificate, another CA, expired, too slow)",
            self.serving.links_refused.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        counter(
            e,
            "volley_controller_calls_denied",
            "Calls to the controller refused because the caller's certificate names another role",
            self.serving
                .calls_denied
                .load(std::sync::atomic::Ordering::Relaxed),
        )?;
        counter(
            e,
            "volley_controller_certificate_reload_failures",
            "Reloads of the controller's certificate files that failed (it kept its certificate)",
            self.links.reload_failures(),
        )?;
        let Some(core) = core else {
            let own = self.links.not_after().map(|at| (["controller", ""], at));
            return expiries(e, own.into_iter());
        };
        let stats = core.stats();
        self.encode_stats(e, &stats)?;
        let states = core.jobs.by_state();
        family(
            e,
            "volley_controller_jobs",
            "Jobs not final yet, by state (queued: no chunk out yet; running; cancelling: chunks out finishing)",
            MetricType::Gauge,
            LIVE_STATES
                .iter()
                .zip(states)
                .map(|(state, count)| ([("state", state.as_str())], count)),
        )
    }
}

/// `volley_certificate_expiry_timestamp_seconds{role,name}`.
fn expiries<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    series: impl Iterator<Item = ([&'a str; 2], i64)>,
) -> Result<(), std::fmt::Error> {
    gauges(
        encoder,
        "volley_certificate_expiry_timestamp_seconds",
        "When the link certificate of the controller and of each registered agent expires, in seconds since the Unix epoch (a front's own: volley_front_certificate_expiry_timestamp_seconds)",
        series.map(|([role, name], at)| ([("role", role), ("name", name)], at)),
    )
}

impl ClusterCollector {
    fn encode_stats(
        &self,
        e: &mut DescriptorEncoder<'_>,
        stats: &ClusterStats,
    ) -> Result<(), std::fmt::Error> {
        let gauges = [
            (
                "volley_queue_depth_chunks",
                "Chunks waiting in the controller's scheduler queues, over every app",
                stats.queue_usage,
            ),
            (
                "volley_pending_notifications",
                "Notifications accepted and not final yet",
                stats.pending_notifications,
            ),
            (
                "volley_max_pending_notifications",
                "Pending notifications above which submissions are refused with 503",
                stats.max_pending_notifications,
            ),
            (
                "volley_active_jobs",
                "Jobs not final yet",
                stats.active_jobs,
            ),
            (
                "volley_agents",
                "Registered agents",
                stats.agents.len() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(e, name, help, value as i64)?;
        }
        if let Some(term) = stats.controller.term {
            gauge(
                e,
                "volley_controller_leader_term",
                "The leading controller's term (PostgreSQL store): it grows by one at each takeover",
                term,
            )?;
        }
        let own = stats
            .certificate_expires_at
            .map(|at| (["controller", ""], at));
        let agents = stats.agents.iter().filter_map(|agent| {
            Some((
                ["agent", agent.name.as_str()],
                agent.certificate_expires_at?,
            ))
        });
        expiries(e, own.into_iter().chain(agents))?;
        let per_queue: [(&str, &str, QueueGauge); 4] = [
            (
                "volley_app_queue_chunks",
                "Chunks waiting in the scheduler's queue of an app and platform",
                |q| q.chunks,
            ),
            (
                "volley_app_queue_notifications",
                "Notifications in those chunks",
                |q| q.notifications,
            ),
            (
                "volley_app_queue_waiting_for_agent",
                "1 while no registered agent declared the app and platform and its chunks wait",
                |q| u64::from(q.waiting_for_agent),
            ),
            (
                "volley_app_queue_paused_agents",
                "Agents that paused the app and platform (its provider's circuit is open there)",
                |q| u64::from(q.paused_agents),
            ),
        ];
        for (name, help, value) in per_queue {
            family(
                e,
                name,
                help,
                MetricType::Gauge,
                stats.queues.iter().map(|q| {
                    (
                        [("app", self.app(&q.app)), ("platform", q.platform.as_str())],
                        value(q),
                    )
                }),
            )?;
        }
        family(
            e,
            "volley_controller_rejected",
            "Submissions the controller refused, by reason",
            MetricType::Counter,
            stats
                .rejections
                .iter()
                .map(|r| ([("reason", rejection_label(&r.reason))], r.count)),
        )?;
        // Reasons outside the closed set share `other`: their counts are summed.
        let mut outcomes: BTreeMap<[&str; 5], u64> = BTreeMap::new();
        for o in &stats.outcomes {
            let labels = [
                self.app(&o.app),
                o.platform.as_str(),
                outcome_label(&o.outcome),
                class_label(&o.class),
                if o.reason.is_empty() {
                    ""
                } else {
                    reason_label(&o.reason)
                },
            ];
            *outcomes.entry(labels).or_default() += o.count;
        }
        family(
            e,
            "volley_notifications",
            "Notifications with a final outcome, by app, platform, outcome, class and reason",
            MetricType::Counter,
            outcomes
                .into_iter()
                .map(|([app, platform, outcome, class, reason], n)| {
                    (
                        [
                            ("app", app),
                            ("platform", platform),
                            ("outcome", outcome),
                            ("class", class),
                            ("reason", reason),
                        ],
                        n,
                    )
                }),
        )?;
        latencies(
            e,
            "volley_job_latency_seconds",
            "Time from a job's acceptance to its last final outcome",
            &stats.job_latency,
            |stat| vec![("app", self.app(&stat.app).to_owned())],
        )?;
        latencies(
            e,
            "volley_chunk_latency_seconds",
            "Time from handing a chunk to an agent to its report",
            &stats.chunk_latency,
            |stat| {
                vec![
                    ("app", self.app(&stat.app).to_owned()),
                    (
                        "platform",
                        stat.platform.map_or("", |p| p.as_str()).to_owned(),
                    ),
                ]
            },
        )?;
        family(
            e,
            "volley_webhook_pending_batches",
            "Invalid-token batches in the app's webhook outbox, waiting for its webhook to acknowledge them",
            MetricType::Gauge,
            stats
                .webhooks
                .iter()
                .map(|w| ([("app", self.app(&w.app))], w.pending_batches)),
        )?;
        family(
            e,
            "volley_webhook_delivered_batches",
            "Invalid-token batches the app's webhook acknowledged",
            MetricType::Counter,
            stats
                .webhooks
                .iter()
                .map(|w| ([("app", self.app(&w.app))], w.delivered_batches)),
        )?;
        family(
            e,
            "volley_webhook_failed_attempts",
            "Webhook POSTs that failed and were retried",
            MetricType::Counter,
            stats
                .webhooks
                .iter()
                .map(|w| ([("app", self.app(&w.app))], w.failed_attempts)),
        )
    }
}

/// A submission's refusal as a label: the admission's own reasons.
fn rejection_label(reason: &str) -> &'static str {
    Rejection::ALL
        .iter()
        .map(|why| why.as_str())
        .find(|known| *known == reason)
        .unwrap_or("other")
}

/// A per-queue gauge's value.
type QueueGauge = fn(&volley_contracts::QueueStat) -> u64;

/// A final outcome as a label.
fn outcome_label(outcome: &str) -> &'static str {
    match outcome {
        "delivered" => "delivered",
        "invalid" => "invalid",
        "failed" => "failed",
        "cancelled" => "cancelled",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_labels_fall_into_other() {
        assert_eq!(class_label("transient"), "transient");
        assert_eq!(class_label("whatever"), "other");
        assert_eq!(outcome_label("delivered"), "delivered");
        assert_eq!(outcome_label("x"), "other");
        assert_eq!(rejection_label("overloaded"), "overloaded");
        assert_eq!(rejection_label("no_credentials"), "no_credentials");
        assert_eq!(rejection_label("?"), "other");
    }
}
