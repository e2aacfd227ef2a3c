//! A pool of HTTP/2 connections to one provider endpoint.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::tls::TlsOptions;

/// Where a provider lives: `https://host:port` (TLS) or `http://host:port` (h2c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// True for `https`.
    pub tls: bool,
    /// Host name or address, as used for SNI and `:authority`.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let _ = s;
        todo!("volley-provider helper fills this in")
    }
}

/// How a pool connects and sends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The provider endpoint.
    pub endpoint: Endpoint,
    /// Number of HTTP/2 connections kept open.
    pub connections: usize,
    /// Time allowed for one request, from sending to the end of the response.
    pub request_timeout: Duration,
    /// Time allowed to open a connection (TCP + TLS + HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// TLS options; ignored for h2c.
    pub tls: TlsOptions,
    /// How many times a request the server never processed is resent before giving up.
    pub max_resends: u32,
}

/// A response read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (empty for an APNs success).
    pub body: Bytes,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server never processed the request (refused stream, or above a GOAWAY's
    /// last-stream-id) and resends were exhausted; safe to retry.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may have been processed before the stream or connection broke.
    #[error("possibly sent: {0}")]
    MaybeSent(String),
    /// No response within the request timeout; the request may have been processed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// No connection could be opened (refused, TLS failure such as an untrusted CA, ...).
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint, as `host:port`.
        endpoint: String,
        /// What failed.
        message: String,
    },
}

/// A pool of HTTP/2 connections to one endpoint.
#[derive(Debug, Clone)]
pub struct Pool {}

impl Pool {
    /// Creates a pool; connections are opened on first use.
    pub fn new(config: PoolConfig) -> Result<Pool, crate::tls::TlsError> {
        let _ = config;
        todo!("volley-provider helper fills this in")
    }

    /// Sends one request and reads its response.
    ///
    /// `make` builds the request head; it is called again for a resend. The body is shared.
    pub async fn send<F>(&self, make: F, body: Bytes) -> Result<Response, SendError>
    where
        F: Fn() -> http::Request<()>,
    {
        let _ = (make, body);
        todo!("volley-provider helper fills this in")
    }
}
