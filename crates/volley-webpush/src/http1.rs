//! HTTP/1.1 connections to one push-service origin, for services that do not speak HTTP/2.
//!
//! HTTP/1.1 carries one request at a time per connection, so the pool keeps up to `limit`
//! keep-alive connections: a request takes a permit, then an idle connection (or opens one
//! while it holds the permit, so that there are never more connections than permits), and
//! puts the connection back when the response was read to its end. A connection found
//! closed is dropped; a request that hyper hands back unsent (the connection closed just
//! before it) is tried once more on another connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use volley_provider::SendError;

use crate::connect::{connect_tls, ConnectError, GuardResolver};

/// Response bodies are read up to this; push-service bodies are small JSON or text.
pub(crate) const MAX_RESPONSE_BODY: usize = 8 * 1024;

/// How often a request hyper returned unsent is tried on another connection.
const MAX_UNSENT_RETRIES: usize = 2;

type Sender = http1::SendRequest<Full<Bytes>>;

/// A response read up to [`MAX_RESPONSE_BODY`].
#[derive(Debug)]
pub(crate) struct H1Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an HTTP/1.1 request got no response.
#[derive(Debug)]
pub(crate) enum H1Error {
    /// The guard refused the origin's addresses when a connection was opened.
    Refused(crate::guard::Refusal),
    /// A transport failure, classed as the HTTP/2 pool classes its own.
    Send(SendError),
}

/// Keep-alive HTTP/1.1 connections to one origin.
pub(crate) struct H1Pool {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    resolver: Arc<GuardResolver>,
    connect_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Sender>>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("idle", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    /// A pool of at most `limit` connections; `tls` should offer ALPN `http/1.1` only.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        tls: TlsConnector,
        resolver: Arc<GuardResolver>,
        connect_timeout: Duration,
        limit: usize,
    ) -> Self {
        H1Pool {
            host,
            port,
            server_name,
            tls,
            resolver,
            connect_timeout,
            permits: Semaphore::new(limit.max(1)),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Adds an open connection (the one the protocol probe made) to the idle ones.
    pub(crate) fn seed(&self, sender: Sender) {
        self.idle.lock().push(sender);
    }

    /// Connections open and idle now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// Sends one request built by `make` (called again when a request comes back unsent).
    /// The caller bounds the whole exchange with its request timeout; dropping this future
    /// closes the connection in use, as HTTP/1.1 cannot abandon one request otherwise.
    pub(crate) async fn send<F>(&self, make: F) -> Result<H1Response, H1Error>
    where
        F: Fn() -> http::Request<Full<Bytes>>,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut unsent = 0;
        loop {
            let mut sender = match self.take_idle() {
                Some(sender) => sender,
                None => self.connect().await?,
            };
            match sender.try_send_request(make()).await {
                Ok(response) => {
                    let (head, body) = response.into_parts();
                    let (body, complete) = read_bounded(body).await;
                    // Only a connection whose response was read to its end can carry the
                    // next request.
                    if complete && !sender.is_closed() {
                        self.idle.lock().push(sender);
                    }
                    return Ok(H1Response {
                        status: head.status,
                        headers: head.headers,
                        body,
                    });
                }
                Err(mut error) => {
                    // hyper hands the request back when it never wrote it: the connection
                    // had closed. Anything else may have reached the server.
                    let never_sent = error.take_message().is_some();
                    if never_sent && unsent < MAX_UNSENT_RETRIES {
                        unsent += 1;
                        continue;
                    }
                    let message = error.error().to_string();
                    return Err(H1Error::Send(if never_sent {
                        SendError::NotSent(message)
                    } else {
                        SendError::MaybeSent(message)
                    }));
                }
            }
        }
    }

    /// An idle connection that is still open, dropping the closed ones.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Sender, H1Error> {
        let connect = async {
            let tls = connect_tls(
                &self.resolver,
                &self.tls,
                &self.server_name,
                &self.host,
                self.port,
            )
            .await?;
            if let Some(alpn) = tls.get_ref().1.alpn_protocol() {
                if alpn != b"http/1.1" {
                    return Err(ConnectError::Failed(format!(
                        "server chose protocol {:?} instead of http/1.1",
                        String::from_utf8_lossy(alpn)
                    )));
                }
            }
            handshake(tls).await.map_err(ConnectError::Failed)
        };
        let failed = |message: String| {
            H1Error::Send(SendError::Connect {
                endpoint: host_port(&self.host, self.port),
                message,
            })
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(sender)) => Ok(sender),
            Ok(Err(ConnectError::Refused(refusal))) => Err(H1Error::Refused(refusal)),
            Ok(Err(ConnectError::Failed(message))) => Err(failed(message)),
            Err(_) => Err(failed(format!(
                "no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }
}

/// The HTTP/1.1 handshake on an open stream; spawns the connection's driver.
pub(crate) async fn handshake<T>(io: T) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http/1.1 handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "http/1.1 connection ended");
        }
    });
    Ok(sender)
}

/// Reads a body up to [`MAX_RESPONSE_BODY`]; `true` when it was read to its end. A body
/// that breaks off is returned as far as it came: the status already arrived.
async fn read_bounded(mut body: hyper::body::Incoming) -> (Bytes, bool) {
    let mut buffer = BytesMut::new();
    loop {
        match body.frame().await {
            None => return (buffer.freeze(), true),
            Some(Err(error)) => {
                tracing::debug!(%error, "http/1.1 response body broke off");
                return (buffer.freeze(), false);
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(MAX_RESPONSE_BODY - buffer.len());
                    buffer.extend_from_slice(&data[..take]);
                    if buffer.len() == MAX_RESPONSE_BODY {
                        return (buffer.freeze(), false);
                    }
                }
            }
        }
    }
}

pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
