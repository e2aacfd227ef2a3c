//! What a pool counts for its owner's metrics: connections open, streams in flight and the
//! latency of each request.
//!
//! The counts are plain atomics, updated once per connection and twice per request; the
//! owner reads them when it is scraped. Clones share the counts, so a client with many pools
//! (Web Push keeps one per push-service origin) gives each a clone and reads the sum.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Receives the latency of each request a pool answered (or timed out).
pub type ObserveLatency = Arc<dyn Fn(Duration) + Send + Sync>;

/// Connections, streams and request latencies of one or more pools; clones share them.
#[derive(Clone, Default)]
pub struct PoolStats {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    connections: AtomicUsize,
    streams: AtomicUsize,
    latency: Option<ObserveLatency>,
}

impl fmt::Debug for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolStats")
            .field("connections", &self.connections())
            .field("streams_in_flight", &self.streams_in_flight())
            .field("observed", &self.inner.latency.is_some())
            .finish()
    }
}

impl PoolStats {
    /// Counts that also hand every request's latency to `latency`.
    pub fn observed(latency: ObserveLatency) -> PoolStats {
        PoolStats {
            inner: Arc::new(Inner {
                latency: Some(latency),
                ..Inner::default()
            }),
        }
    }

    /// HTTP/2 connections open now, those draining after a GOAWAY included.
    pub fn connections(&self) -> usize {
        self.inner.connections.load(Relaxed)
    }

    /// Requests sent and not yet answered in full.
    pub fn streams_in_flight(&self) -> usize {
        self.inner.streams.load(Relaxed)
    }

    /// Whether request latencies are wanted (so that a request reads the clock only then).
    pub fn observes(&self) -> bool {
        self.inner.latency.is_some()
    }

    /// Records one request's latency; for transports outside [`Pool`](crate::Pool), such as
    /// Web Push over HTTP/1.1.
    pub fn observe_request(&self, took: Duration) {
        if let Some(latency) = &self.inner.latency {
            latency(took);
        }
    }

    /// Counts a connection open until the guard (kept by its driver task) is dropped.
    pub(crate) fn connection(&self) -> OpenConnection {
        self.inner.connections.fetch_add(1, Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts a stream in flight until the guard is dropped (borrowed: no reference count
    /// changes per request).
    pub(crate) fn stream(&self) -> InFlight<'_> {
        self.inner.streams.fetch_add(1, Relaxed);
        InFlight(&self.inner.streams)
    }
}

/// A connection counted open; dropping it counts it closed.
pub(crate) struct OpenConnection(PoolStats);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.inner.connections.fetch_sub(1, Relaxed);
    }
}

/// A stream counted in flight; dropping it counts it answered.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn clones_share_the_counts_and_guards_give_them_back() {
        let seen = Arc::new(AtomicU64::new(0));
        let stats = PoolStats::observed({
            let seen = seen.clone();
            Arc::new(move |took| {
                seen.fetch_add(took.as_millis() as u64, Relaxed);
            })
        });
        let other = stats.clone();
        let conn = stats.connection();
        let streams = [stats.stream(), other.stream()];
        assert_eq!((other.connections(), other.streams_in_flight()), (1, 2));
        drop(streams);
        drop(conn);
        assert_eq!((stats.connections(), stats.streams_in_flight()), (0, 0));
        other.observe_request(Duration::from_millis(7));
        assert_eq!(seen.load(Relaxed), 7);
        assert!(!PoolStats::default().observes());
    }
}
