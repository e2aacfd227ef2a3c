//! Whether and when to send a notification again: a pure function of where the notification
//! stands, the provider's answer and the time, so that any clock can drive it.
//!
//! `backon`'s `ExponentialBuilder` was considered: its jitter adds up to one more delay on top
//! of the exponential delay, where full jitter draws the whole wait below it, and it cannot
//! take `Retry-After` or a deadline into account; the rule fits in a few lines here.

use std::time::Duration;

use tokio::time::Instant;
use volley_provider::Outcome;

/// How failed sends are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Sends per notification for transient failures, the first included.
    pub max_attempts: u32,
    /// The back-off ceiling before the first retry; it doubles with each retry.
    pub base_delay: Duration,
    /// The largest back-off ceiling (a longer `Retry-After` is still honoured).
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The back-off ceiling after `failures` failed sends: `base × 2^(failures-1)`, capped.
    fn ceiling(&self, failures: u32) -> Duration {
        self.base_delay
            .saturating_mul(1 << failures.saturating_sub(1).min(20))
            .min(self.max_delay)
    }

    /// The wait before the next send after `failures` failed sends: full jitter below the
    /// ceiling (`jitter` in `0..=1`), never shorter than the provider's `Retry-After`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let backoff = self.ceiling(failures).mul_f64(jitter.clamp(0.0, 1.0));
        backoff.max(retry_after.unwrap_or_default())
    }
}

/// Where one notification stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RetryState {
    /// Sends answered with a transient failure: they count against `max_attempts`.
    pub transient: u32,
    /// Sends answered with a credential error. They pause the app's provider (its breaker)
    /// rather than burn attempts, but are bounded the same way so that a credential error
    /// the breaker does not catch cannot loop.
    pub credential: u32,
    /// Retries of sends that may have reached the provider.
    pub possible_duplicates: u32,
}

/// What to do after a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The outcome is final: report it.
    Final,
    /// Send again after this wait.
    Retry(Duration),
}

/// Decides what follows `outcome`, answered at `now`; no send may start at or after
/// `deadline` (the notification's expiration, or the chunk's own time limit).
///
/// Delivered, invalid-token and bad-request answers are final at once. A transient failure
/// is retried until `max_attempts` sends, after `RetryPolicy::delay`; a credential error is
/// retried the same way without counting as an attempt (the breaker pauses the sends). A
/// retry that could not start before the deadline is not made. `jitter` is drawn (in `0..=1`)
/// only for a retry's delay: a final answer, nearly every one, costs no random number.
pub(crate) fn decide(
    policy: &RetryPolicy,
    state: &mut RetryState,
    outcome: &Outcome,
    now: Instant,
    deadline: Instant,
    jitter: impl FnOnce() -> f64,
) -> Decision {
    let (failures, retry_after, maybe_delivered) = match outcome {
        Outcome::Transient {
            retry_after,
            maybe_delivered,
            ..
        } => {
            state.transient += 1;
            (state.transient, *retry_after, *maybe_delivered)
        }
        Outcome::Credential { .. } => {
            state.credential += 1;
            (state.credential, None, false)
        }
        Outcome::Delivered | Outcome::InvalidToken { .. } | Outcome::BadRequest { .. } => {
            return Decision::Final
        }
    };
    if failures >= policy.max_attempts {
        return Decision::Final;
    }
    let delay = policy.delay(failures, retry_after, jitter());
    if now + delay >= deadline {
        return Decision::Final;
    }
    state.possible_duplicates += u32::from(maybe_delivered);
    Decision::Retry(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use volley_provider::Reason;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
    };

    fn transient(retry_after: Option<u64>) -> Outcome {
        Outcome::Transient {
            reason: Reason::known("ServiceUnavailable"),
            retry_after: retry_after.map(Duration::from_millis),
            maybe_delivered: false,
        }
    }

    #[test]
    fn back_off_doubles_up_to_the_cap_and_never_undercuts_retry_after() {
        let cases = [
            // (failures, retry_after ms, jitter, expected ms)
            (1, None, 1.0, 100),
            (2, None, 1.0, 200),
            (3, None, 1.0, 400),
            (10, None, 1.0, 2000),
            (40, None, 1.0, 2000),
            (3, None, 0.5, 200),
            (3, None, 0.0, 0),
            (1, Some(1000), 0.0, 1000),
            (1, Some(60_000), 1.0, 60_000),
            (5, Some(10), 1.0, 1600),
        ];
        for (failures, retry_after, jitter, expected) in cases {
            assert_eq!(
                POLICY.delay(failures, retry_after.map(Duration::from_millis), jitter),
                Duration::from_millis(expected),
                "failures {failures}, retry-after {retry_after:?}, jitter {jitter}"
            );
        }
    }

    #[test]
    fn decisions_by_class() {
        let now = Instant::now();
        let far = now + Duration::from_secs(3600);
        let final_at_once = [
            Outcome::Delivered,
            Outcome::InvalidToken {
                reason: Reason::known("Unregistered"),
                timestamp_ms: Some(1),
            },
            Outcome::BadRequest {
                reason: Reason::known("BadTopic"),
            },
        ];
        for outcome in final_at_once {
            let mut state = RetryState::default();
            assert_eq!(
                decide(&POLICY, &mut state, &outcome, now, far, || 1.0),
                Decision::Final
            );
            assert_eq!(state, RetryState::default());
        }
        // A retry that would start at or past the deadline is not made.
        let mut state = RetryState::default();
        let soon = now + Duration::from_millis(500);
        assert_eq!(
            decide(
                &POLICY,
                &mut state,
                &transient(Some(500)),
                now,
                soon,
                || 0.0
            ),
            Decision::Final
        );
        // Credential errors do not use up transient attempts.
        let mut state = RetryState::default();
        let credential = Outcome::Credential {
            reason: Reason::known("InvalidProviderToken"),
        };
        assert!(matches!(
            decide(&POLICY, &mut state, &credential, now, far, || 1.0),
            Decision::Retry(_)
        ));
        assert_eq!(state.transient, 0);
        assert_eq!(state.credential, 1);
    }

    /// One provider answer in a simulated sequence.
    fn answer() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            2 => Just(Outcome::Delivered),
            1 => Just(Outcome::InvalidToken { reason: Reason::known("Unregistered"), timestamp_ms: None }),
            1 => Just(Outcome::BadRequest { reason: Reason::known("BadTopic") }),
            1 => Just(Outcome::Credential { reason: Reason::known("InvalidProviderToken") }),
            6 => (proptest::option::of(0u64..5_000), any::<bool>()).prop_map(|(retry_after, maybe)| {
                Outcome::Transient {
                    reason: Reason::known("ServiceUnavailable"),
                    retry_after: retry_after.map(Duration::from_millis),
                    maybe_delivered: maybe,
                }
            }),
        ]
    }

    proptest! {
        /// Drives one notification through a random sequence of answers with a simulated
        /// clock: each send takes a random time, each retry waits what `decide` says.
        #[test]
        fn retries_keep_their_promises(
            answers in proptest::collection::vec(answer(), 1..40),
            latencies in proptest::collection::vec(0u64..3_000, 40),
            jitters in proptest::collection::vec(0.0f64..=1.0, 40),
            max_attempts in 1u32..6,
            deadline_ms in 0u64..30_000,
        ) {
            let policy = RetryPolicy { max_attempts, ..POLICY };
            let start = Instant::now();
            let deadline = start + Duration::from_millis(deadline_ms) + Duration::from_millis(1);
            let mut state = RetryState::default();
            let mut now = start;
            let mut sends = 0usize;
            let mut transient_sends = 0u32;
            loop {
                // A send happens at `now`.
                prop_assert!(now < deadline, "a send started at or after the deadline");
                let outcome = &answers[sends.min(answers.len() - 1)];
                sends += 1;
                transient_sends += u32::from(matches!(outcome, Outcome::Transient { .. }));
                now += Duration::from_millis(latencies[sends % latencies.len()]);
                match decide(&policy, &mut state, outcome, now, deadline, || jitters[sends % jitters.len()]) {
                    Decision::Final => break,
                    Decision::Retry(delay) => {
                        prop_assert!(!matches!(
                            outcome,
                            Outcome::Delivered | Outcome::InvalidToken { .. } | Outcome::BadRequest { .. }
                        ), "a final answer was retried");
                        if let Outcome::Transient { retry_after: Some(retry_after), .. } = outcome {
                            prop_assert!(delay >= *retry_after, "waited {delay:?} < Retry-After {retry_after:?}");
                        }
                        now += delay;
                    }
                }
            }
            prop_assert!(transient_sends <= max_attempts, "{transient_sends} transient sends > {max_attempts}");
            prop_assert!(sends as u32 <= 2 * max_attempts);
        }
    }
}
