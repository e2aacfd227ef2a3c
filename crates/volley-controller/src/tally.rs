//! Per-app tallies: counters, final outcomes by reason, job and chunk latencies.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use volley_contracts::{
    AppCounters, ChunkReport, Histogram, LatencyStat, OutcomeCount, Platform, RateSample,
};

/// (platform, outcome, class, reason) of an app's per-reason counters.
type OutcomeKey = (Platform, &'static str, String, String);

/// The counters of one app, kept together so that recording a chunk takes one lock and
/// one lookup by the app's name (no key to allocate).
#[derive(Debug, Default)]
struct AppTally {
    /// (delivered, failed or invalid) per platform, once the platform had a chunk.
    counters: [Option<(u64, u64)>; Platform::ALL.len()],
    /// Final outcomes by provider and reason.
    outcomes: HashMap<OutcomeKey, u64>,
    /// Accepted → finished.
    job_latency: Option<Histogram>,
    /// Handed out → reported, per platform.
    chunk_latency: [Option<Histogram>; Platform::ALL.len()],
}

/// What one chunk's report adds to its app's tally.
#[derive(Debug)]
pub(crate) struct ChunkTally<'a> {
    pub(crate) app: &'a str,
    pub(crate) platform: Platform,
    pub(crate) report: &'a ChunkReport,
    /// Notifications delivered, and failed or invalid.
    pub(crate) success: u64,
    pub(crate) error: u64,
    /// The chunk's round trip, when it went out.
    pub(crate) took_ms: Option<u64>,
    /// The job's time from acceptance to its end, when this was its last chunk.
    pub(crate) job_ms: Option<u64>,
}

/// The sections of the stats the tallies fill.
#[derive(Debug, Default)]
pub(crate) struct TallyStats {
    pub(crate) apps: Vec<AppCounters>,
    pub(crate) outcomes: Vec<OutcomeCount>,
    pub(crate) job_latency: Vec<LatencyStat>,
    pub(crate) chunk_latency: Vec<LatencyStat>,
}

/// Every app's tally.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    apps: Mutex<HashMap<String, AppTally>>,
    /// Over every app, for the dashboard's history: read without the lock.
    delivered: AtomicU64,
    invalid: AtomicU64,
    failed: AtomicU64,
}

/// How many once-a-second samples the dashboard's history keeps: ten minutes.
pub(crate) const HISTORY_SAMPLES: usize = 600;

/// The outcome totals, sampled once a second, the oldest dropped past [`HISTORY_SAMPLES`].
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<RateSample>>,
}

impl History {
    /// Adds a sample, dropping the oldest past the ring's size.
    pub(crate) fn push(&self, sample: RateSample) {
        let mut samples = self.samples.lock();
        if samples.len() >= HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub(crate) fn samples(&self) -> Vec<RateSample> {
        self.samples.lock().iter().copied().collect()
    }
}

impl Tallies {
    /// Adds a chunk to its app's counters, outcomes and latencies, under one lock.
    pub(crate) fn count(&self, chunk: ChunkTally<'_>) {
        let report = chunk.report;
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
        let platform = chunk.platform;
        self.delivered
            .fetch_add(u64::from(report.delivered), Relaxed);
        self.invalid.fetch_add(report.invalid.len() as u64, Relaxed);
        self.failed.fetch_add(report.failed.len() as u64, Relaxed);
        let mut apps = self.apps.lock();
        let tally = match apps.get_mut(chunk.app) {
            Some(tally) => tally,
            None => apps.entry(chunk.app.to_owned()).or_default(),
        };
        let counters = tally.counters[platform.index()].get_or_insert((0, 0));
        counters.0 += chunk.success;
        counters.1 += chunk.error;
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
        if let Some(took) = chunk.took_ms {
            tally.chunk_latency[platform.index()]
                .get_or_insert_with(Histogram::default)
                .observe(took);
        }
        if let Some(job_ms) = chunk.job_ms {
            tally
                .job_latency
                .get_or_insert_with(Histogram::default)
                .observe(job_ms);
        }
    }

    /// Notifications delivered, found invalid and failed so far, over every app, at `at_ms`.
    pub(crate) fn totals(&self, at_ms: u64) -> RateSample {
        RateSample {
            at_ms,
            delivered: self.delivered.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }

    /// The tallies as the stats carry them, sorted.
    pub(crate) fn stats(&self) -> TallyStats {
        let mut stats = TallyStats::default();
        for (app, tally) in self.apps.lock().iter() {
            for platform in Platform::ALL {
                if let Some((success, error)) = tally.counters[platform.index()] {
                    stats.apps.push(AppCounters {
                        app: app.clone(),
                        platform,
                        success,
                        error,
                    });
                }
                if let Some(histogram) = &tally.chunk_latency[platform.index()] {
                    stats.chunk_latency.push(LatencyStat {
                        app: app.clone(),
                        platform: Some(platform),
                        histogram: histogram.clone(),
                    });
                }
            }
            stats.outcomes.extend(tally.outcomes.iter().map(
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
                stats.job_latency.push(LatencyStat {
                    app: app.clone(),
                    platform: None,
                    histogram: histogram.clone(),
                });
            }
        }
        stats
            .apps
            .sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        stats.outcomes.sort_by(|a, b| {
            (&a.app, a.platform, &a.outcome, &a.class, &a.reason)
                .cmp(&(&b.app, b.platform, &b.outcome, &b.class, &b.reason))
        });
        stats.job_latency.sort_by(|a, b| a.app.cmp(&b.app));
        stats
            .chunk_latency
            .sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_last_ten_minutes_oldest_first() {
        let history = History::default();
        for at_ms in 0..(HISTORY_SAMPLES as u64 + 5) {
            history.push(RateSample {
                at_ms,
                delivered: at_ms * 10,
                invalid: 0,
                failed: 0,
            });
        }
        let samples = history.samples();
        assert_eq!(samples.len(), HISTORY_SAMPLES);
        assert_eq!(samples[0].at_ms, 5);
        assert_eq!(
            samples[HISTORY_SAMPLES - 1].at_ms,
            HISTORY_SAMPLES as u64 + 4
        );
    }

    #[test]
    fn totals_add_every_app() {
        let tallies = Tallies::default();
        let report = ChunkReport {
            delivered: 3,
            invalid: vec![(0, "Unregistered".into(), None)],
            ..ChunkReport::default()
        };
        for app in ["shop", "news"] {
            tallies.count(ChunkTally {
                app,
                platform: Platform::Fcm,
                report: &report,
                success: 3,
                error: 1,
                took_ms: Some(5),
                job_ms: None,
            });
        }
        let totals = tallies.totals(7);
        assert_eq!(
            (
                totals.at_ms,
                totals.delivered,
                totals.invalid,
                totals.failed
            ),
            (7, 6, 2, 0)
        );
    }
}
