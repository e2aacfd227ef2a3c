//! Per-API-key rate limits: one token bucket per key, kept as a GCRA "theoretical arrival
//! time" in one atomic, so checking a request takes no lock and no allocation.
//!
//! A key with rate `r` and burst `b` may send `b` requests at once and then one every `1/r`
//! seconds; a request above that is refused with the time until it would have been allowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use volley_config::Config;

/// One key's bucket.
#[derive(Debug)]
struct Bucket {
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run (the burst).
    tolerance: u64,
    /// The theoretical arrival time of the next request, in ns since `Limiter::start`.
    tat: AtomicU64,
}

/// Every key's bucket, by key slot; `None` for keys without a limit.
#[derive(Debug)]
pub(crate) struct Limiter {
    start: Instant,
    buckets: Vec<Option<Bucket>>,
}

impl Limiter {
    /// Buckets for every key of every app, in the order `KeyRing` numbers them.
    pub(crate) fn new(config: &Config) -> Limiter {
        let mut buckets = Vec::new();
        for app in &config.apps {
            let rate = app
                .requests_per_second
                .or(config.front.key_requests_per_second)
                .filter(|rate| rate.is_finite() && *rate > 0.0);
            for _ in &app.api_keys {
                buckets.push(rate.map(|rate| {
                    let burst = match config.front.key_burst {
                        0 => rate.ceil().max(1.0) as u64,
                        burst => u64::from(burst),
                    };
                    let interval = (1e9 / rate).max(1.0) as u64;
                    Bucket {
                        interval,
                        tolerance: interval.saturating_mul(burst - 1),
                        tat: AtomicU64::new(0),
                    }
                }));
            }
        }
        Limiter {
            start: Instant::now(),
            buckets,
        }
    }

    /// Takes one request from `slot`'s bucket, or says how long until one is available.
    pub(crate) fn check(&self, slot: usize) -> Result<(), Duration> {
        let Some(Some(bucket)) = self.buckets.get(slot) else {
            return Ok(());
        };
        bucket.take(self.start.elapsed().as_nanos() as u64)
    }
}

impl Bucket {
    fn take(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let from = tat.max(now);
            let ahead = from - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                from + self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, burst: u64) -> Bucket {
        let interval = (1e9 / rate) as u64;
        Bucket {
            interval,
            tolerance: interval * (burst - 1),
            tat: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        // 10 per second, burst 3, all at t = 1 s.
        let b = bucket(10.0, 3);
        let t = 1_000_000_000;
        for _ in 0..3 {
            assert!(b.take(t).is_ok());
        }
        let wait = b.take(t).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // 100 ms later exactly one more fits.
        assert!(b.take(t + 100_000_000).is_ok());
        assert!(b.take(t + 100_000_000).is_err());
        // After a quiet second the whole burst is back, and no more.
        let later = t + 2_000_000_000;
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn keys_without_a_limit_always_pass_and_app_rates_override_the_front_default() {
        let config = Config::from_toml(
            r#"
            [front]
            key_requests_per_second = 1.0
            [[apps]]
            name = "a"
            api_keys = ["key-of-app-a-0123456789", "key2-of-app-a-0123456789"]
            [apps.fcm]
            service_account_file = "sa.json"
            [[apps]]
            name = "b"
            requests_per_second = 1000.0
            api_keys = ["key-of-app-b-0123456789"]
            [apps.fcm]
            service_account_file = "sa.json"
            "#,
        )
        .unwrap();
        let limiter = Limiter::new(&config);
        assert!(limiter.check(0).is_ok());
        assert!(limiter.check(0).is_err(), "rate 1/s, burst 1");
        assert!(limiter.check(1).is_ok(), "each key has its own bucket");
        for _ in 0..100 {
            assert!(limiter.check(2).is_ok(), "app b allows 1000/s");
        }
        assert!(limiter.check(99).is_ok(), "unknown slot: no limit");
    }
}
