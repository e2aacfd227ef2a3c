//! A rate limit per app and provider: a token bucket kept as one atomic "next free slot"
//! (GCRA), where each send reserves its slot and sleeps until it.
//!
//! `governor` implements the same algorithm, but waiting with it means polling `check()`:
//! every waiting send wakes at each free slot and all but one sleep again, which at thousands
//! of sends in flight costs more than the sends. A reservation wakes each send once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of `per_second` tokens a second holding a tenth of a second's worth.
#[derive(Debug)]
pub(crate) struct RateLimit {
    interval_ns: u64,
    /// How far ahead of the rate a burst may run.
    burst_ns: u64,
    origin: Instant,
    /// The theoretical arrival time of the next send, in ns since `origin`: a send at `t`
    /// may go when `next - burst_ns <= t`.
    next: AtomicU64,
}

impl RateLimit {
    pub(crate) fn new(per_second: u32, now: Instant) -> RateLimit {
        let per_second = u64::from(per_second.max(1));
        let interval_ns = 1_000_000_000 / per_second;
        let burst = (per_second / 10).max(1);
        RateLimit {
            interval_ns,
            burst_ns: (burst - 1) * interval_ns,
            origin: now,
            next: AtomicU64::new(0),
        }
    }

    /// Reserves the next slot and returns how long to wait for it, or `None` (reserving
    /// nothing) when the slot comes at or after `latest`.
    pub(crate) fn reserve(&self, now: Instant, latest: Instant) -> Option<Duration> {
        let now_ns = self.nanos(now);
        let latest_ns = self.nanos(latest);
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let send_at = now_ns.max(next.saturating_sub(self.burst_ns));
            if send_at > now_ns && send_at >= latest_ns {
                return None;
            }
            match self.next.compare_exchange_weak(
                next,
                next.max(now_ns) + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Duration::from_nanos(send_at - now_ns)),
                Err(current) => next = current,
            }
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_sends_are_spaced_by_the_rate() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let limit = RateLimit::new(100, t0);
        // A tenth of a second's worth (10) goes at once.
        for _ in 0..10 {
            assert_eq!(limit.reserve(t0, far), Some(Duration::ZERO));
        }
        // Then one every 10 ms.
        for n in 1..=5u64 {
            assert_eq!(limit.reserve(t0, far), Some(Duration::from_millis(10 * n)));
        }
    }

    #[test]
    fn the_rate_holds_over_time_and_idle_time_refills_only_the_burst() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(3600);
        let limit = RateLimit::new(1000, t0);
        // Sends reserved over one simulated second never exceed the rate plus the burst.
        let mut sent_within_a_second = 0;
        for _ in 0..5000 {
            let wait = limit.reserve(t0, far).unwrap();
            if wait < Duration::from_secs(1) {
                sent_within_a_second += 1;
            }
        }
        assert_eq!(sent_within_a_second, 1000 + 100 - 1);
        // After an hour idle, still only one burst.
        let later = t0 + Duration::from_secs(7200);
        let limit = RateLimit::new(1000, t0);
        let immediate = (0..1000)
            .filter(|_| {
                limit.reserve(later, later + Duration::from_secs(60)) == Some(Duration::ZERO)
            })
            .count();
        assert_eq!(immediate, 100);
    }

    #[test]
    fn a_slot_past_the_latest_time_is_not_reserved() {
        let t0 = Instant::now();
        let limit = RateLimit::new(10, t0);
        assert_eq!(
            limit.reserve(t0, t0 + Duration::from_millis(150)),
            Some(Duration::ZERO)
        );
        assert_eq!(
            limit.reserve(t0, t0 + Duration::from_millis(150)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(limit.reserve(t0, t0 + Duration::from_millis(150)), None);
        // Nothing was reserved by the refusal.
        assert_eq!(
            limit.reserve(t0, t0 + Duration::from_secs(1)),
            Some(Duration::from_millis(200))
        );
    }
}
