//! Plumbing shared by Volley's APNs and FCM clients.
//!
//! - [`pool`]: a pool of HTTP/2 connections over TLS (or h2c), driven through the `h2` crate
//!   directly, with many streams in flight per connection, per-request timeouts, reconnects
//!   after GOAWAY and resends of streams the server never processed.
//! - [`tls`]: rustls client configuration with the ring provider, extra CA certificates and
//!   client certificates.
//! - [`outcome`]: the five outcome classes both providers' responses map onto.
//! - [`stats`]: what a pool counts for the agent's metrics (connections, streams, latency).

pub mod outcome;
pub mod pool;
pub mod stats;
pub mod tls;

pub use outcome::{Outcome, Reason};
pub use pool::{Endpoint, Pool, PoolConfig, Resolve, Response, SendError};
pub use stats::PoolStats;
