//! A circuit breaker per app and provider: a pure state machine driven by the caller's clock.
//!
//! Closed, every send goes. It opens when the recent answers are mostly failures (a failure
//! ratio over a sliding window, once enough answers came back) or after a run of credential
//! errors. Open, nothing is sent until the cool-down ends; then one probe goes (half-open).
//! A good probe closes it; a failed one opens it again for twice as long, up to a cap.

use std::time::Duration;

use tokio::time::Instant;
use volley_config::BreakerConfig;
use volley_provider::Outcome;

/// Buckets of the sliding window; the oldest is dropped as time moves on.
const BUCKETS: usize = 10;

/// How often a notification waiting on a half-open breaker looks again.
const PROBE_POLL: Duration = Duration::from_millis(50);

/// What an answer says about the provider's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The provider answered sensibly (delivered, invalid token, bad request).
    Healthy,
    /// A transient failure: 5xx, throttling, timeout, broken connection.
    Failure,
    /// The app's credentials were refused.
    Credential,
}

impl Signal {
    pub(crate) fn of(outcome: &Outcome) -> Signal {
        match outcome {
            Outcome::Transient { .. } => Signal::Failure,
            Outcome::Credential { .. } => Signal::Credential,
            Outcome::Delivered | Outcome::InvalidToken { .. } | Outcome::BadRequest { .. } => {
                Signal::Healthy
            }
        }
    }
}

/// Whether a send may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Send; `probe` when this send decides whether a half-open breaker closes.
    Send {
        /// This send is the half-open breaker's probe: record its answer with `probe: true`.
        probe: bool,
    },
    /// Do not send before this time, then ask again.
    WaitUntil(Instant),
}

/// A change of state worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Opened (or opened again after a failed probe) for this cool-down.
    Opened(Duration),
    /// A probe succeeded: sends resume.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

/// The breaker of one app's provider on this agent.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    /// A probe unanswered for this long is presumed lost (its chunk was dropped) and replaced.
    probe_timeout: Duration,
    state: State,
    /// Answers and failures per bucket of `window / BUCKETS`.
    buckets: [(u32, u32); BUCKETS],
    /// The bucket number (time since `origin` / bucket length) of `buckets[current]`.
    bucket_number: u64,
    origin: Instant,
    consecutive_credential: u32,
    cool_down: Duration,
    /// When the breaker last opened from closed: probes that fail keep it open, only a good
    /// one clears it.
    opened_at: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, probe_timeout: Duration, now: Instant) -> Breaker {
        Breaker {
            cool_down: config.cool_down,
            config,
            probe_timeout,
            state: State::Closed,
            buckets: [(0, 0); BUCKETS],
            bucket_number: 0,
            origin: now,
            consecutive_credential: 0,
            opened_at: None,
        }
    }

    /// Whether a send may go at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed => Admit::Send { probe: false },
            State::Open { until } if now < until => Admit::WaitUntil(until),
            State::HalfOpen { probe_since } if now < probe_since + self.probe_timeout => {
                Admit::WaitUntil(now + PROBE_POLL.min(self.config.cool_down))
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen { probe_since: now };
                Admit::Send { probe: true }
            }
        }
    }

    /// Until when the breaker is open at `now`, if it is (half-open does not count: a chunk
    /// arriving then may wait for the probe).
    pub(crate) fn open_until(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Open { until } if now < until => Some(until),
            _ => None,
        }
    }

    /// The state as the `volley_agent_breaker_state` gauge shows it at `now`: 0 closed,
    /// 1 half-open (a probe is out, or the next send is one), 2 open.
    pub(crate) fn gauge(&self, now: Instant) -> i64 {
        match self.state {
            State::Closed => 0,
            State::Open { until } if now < until => 2,
            State::Open { .. } | State::HalfOpen { .. } => 1,
        }
    }

    /// How long the breaker has been open or half-open without a good probe, at `now`.
    pub(crate) fn open_for(&self, now: Instant) -> Option<Duration> {
        self.opened_at
            .map(|opened| now.saturating_duration_since(opened))
    }

    /// Gives back a probe that was admitted but not sent, so that the next send probes.
    pub(crate) fn abandon_probe(&mut self, now: Instant) {
        if let State::HalfOpen { .. } = self.state {
            self.state = State::Open { until: now };
        }
    }

    /// Records the answer to a send admitted at some earlier time.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        signal: Signal,
        probe: bool,
    ) -> Option<Transition> {
        if probe {
            if signal == Signal::Healthy {
                let was_closed = self.state == State::Closed;
                self.close();
                return (!was_closed).then_some(Transition::Closed);
            }
            self.cool_down = (self.cool_down * 2).min(self.config.max_cool_down);
            self.state = State::Open {
                until: now + self.cool_down,
            };
            return Some(Transition::Opened(self.cool_down));
        }
        // Answers to sends made before the breaker opened say nothing new.
        if self.state != State::Closed {
            return None;
        }
        let bucket = self.rotate(now);
        bucket.0 += 1;
        if signal != Signal::Healthy {
            bucket.1 += 1;
        }
        self.consecutive_credential = match signal {
            Signal::Credential => self.consecutive_credential + 1,
            Signal::Healthy => 0,
            Signal::Failure => self.consecutive_credential,
        };
        let (answers, failures) = self
            .buckets
            .iter()
            .fold((0, 0), |(a, f), (answers, failures)| {
                (a + answers, f + failures)
            });
        let too_many_failures = answers >= self.config.min_requests
            && f64::from(failures) >= self.config.failure_ratio * f64::from(answers);
        if too_many_failures || self.consecutive_credential >= self.config.credential_failures {
            self.opened_at = Some(now);
            self.cool_down = self.config.cool_down;
            self.state = State::Open {
                until: now + self.cool_down,
            };
            return Some(Transition::Opened(self.cool_down));
        }
        None
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.opened_at = None;
        self.buckets = [(0, 0); BUCKETS];
        self.consecutive_credential = 0;
        self.cool_down = self.config.cool_down;
    }

    /// The bucket for `now`, clearing the buckets that fell out of the window.
    fn rotate(&mut self, now: Instant) -> &mut (u32, u32) {
        let length = (self.config.window / BUCKETS as u32).max(Duration::from_millis(1));
        let number =
            (now.saturating_duration_since(self.origin).as_nanos() / length.as_nanos()) as u64;
        let stale = number
            .saturating_sub(self.bucket_number)
            .min(BUCKETS as u64);
        for step in 1..=stale {
            let index = (self.bucket_number + step) as usize % BUCKETS;
            self.buckets[index] = (0, 0);
        }
        self.bucket_number = self.bucket_number.max(number);
        &mut self.buckets[self.bucket_number as usize % BUCKETS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 10,
            failure_ratio: 0.5,
            credential_failures: 3,
            cool_down: Duration::from_secs(1),
            max_cool_down: Duration::from_secs(4),
            max_wait: Duration::from_secs(30),
        }
    }

    fn breaker(now: Instant) -> Breaker {
        Breaker::new(config(), Duration::from_secs(5), now)
    }

    const GO: Admit = Admit::Send { probe: false };
    const PROBE: Admit = Admit::Send { probe: true };

    #[test]
    fn opens_on_a_failure_ratio_probes_after_the_cool_down_and_closes_on_success() {
        let t0 = Instant::now();
        let mut b = breaker(t0);
        assert_eq!(b.gauge(t0), 0);
        // Nine failures are below min_requests: still closed.
        for _ in 0..9 {
            assert_eq!(b.admit(t0), GO);
            b.record(t0, Signal::Failure, false);
        }
        assert_eq!(b.admit(t0), GO);
        assert_eq!(
            b.record(t0, Signal::Healthy, false),
            Some(Transition::Opened(Duration::from_secs(1)))
        );
        // 9 of 10 failed: open for the cool-down.
        assert_eq!(b.open_until(t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(b.gauge(t0), 2);
        assert_eq!(b.admit(t0), Admit::WaitUntil(t0 + Duration::from_secs(1)));
        // Late answers of sends made before it opened change nothing.
        b.record(t0, Signal::Healthy, false);
        assert!(b.open_until(t0).is_some());

        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.gauge(t1), 1, "the next send probes");
        assert_eq!(b.admit(t1), PROBE);
        assert_eq!(b.gauge(t1), 1);
        // Only one probe at a time; the others poll.
        assert!(matches!(b.admit(t1), Admit::WaitUntil(t) if t > t1));
        assert_eq!(b.open_until(t1), None, "half-open is not open");
        assert_eq!(
            b.record(t1, Signal::Healthy, true),
            Some(Transition::Closed)
        );
        assert_eq!(b.gauge(t1), 0);
        assert_eq!(b.admit(t1), GO);
    }

    #[test]
    fn failed_probes_double_the_cool_down_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = breaker(t0);
        for _ in 0..3 {
            b.record(t0, Signal::Credential, false);
        }
        let mut now = t0;
        for expected in [1, 2, 4, 4] {
            let until = b.open_until(now).expect("open");
            assert_eq!(until - now, Duration::from_secs(expected));
            now = until;
            assert_eq!(b.admit(now), PROBE);
            b.record(now, Signal::Failure, true);
        }
        now = b.open_until(now).unwrap();
        assert_eq!(b.admit(now), PROBE);
        b.record(now, Signal::Healthy, true);
        assert_eq!(b.admit(now), GO);
        // Closed again: the next opening starts from the base cool-down.
        for _ in 0..3 {
            b.record(now, Signal::Credential, false);
        }
        assert_eq!(b.open_until(now), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn credential_errors_in_a_row_open_it_and_a_success_resets_the_run() {
        let t0 = Instant::now();
        let mut b = breaker(t0);
        b.record(t0, Signal::Credential, false);
        b.record(t0, Signal::Credential, false);
        b.record(t0, Signal::Healthy, false);
        b.record(t0, Signal::Credential, false);
        b.record(t0, Signal::Credential, false);
        assert_eq!(b.admit(t0), GO);
        b.record(t0, Signal::Credential, false);
        assert!(b.open_until(t0).is_some());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut b = breaker(t0);
        for _ in 0..8 {
            b.record(t0, Signal::Failure, false);
        }
        // Eleven seconds later those failures are gone: ten healthy answers and two failures
        // are far below the ratio.
        let later = t0 + Duration::from_secs(11);
        for _ in 0..10 {
            b.record(later, Signal::Healthy, false);
        }
        b.record(later, Signal::Failure, false);
        b.record(later, Signal::Failure, false);
        assert_eq!(b.admit(later), GO);
        // Within the window they count.
        let mut b = breaker(t0);
        for _ in 0..8 {
            b.record(t0, Signal::Failure, false);
        }
        let soon = t0 + Duration::from_secs(5);
        for _ in 0..2 {
            b.record(soon, Signal::Healthy, false);
        }
        assert!(b.open_until(soon).is_some());
    }

    #[test]
    fn a_lost_probe_is_replaced_after_its_timeout() {
        let t0 = Instant::now();
        let mut b = breaker(t0);
        for _ in 0..3 {
            b.record(t0, Signal::Credential, false);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.admit(t1), PROBE);
        assert!(matches!(
            b.admit(t1 + Duration::from_secs(4)),
            Admit::WaitUntil(_)
        ));
        assert_eq!(b.admit(t1 + Duration::from_secs(5)), PROBE);
        // A probe given back unsent is handed to the next send.
        b.abandon_probe(t1 + Duration::from_secs(5));
        assert_eq!(b.admit(t1 + Duration::from_secs(5)), PROBE);
    }
}
