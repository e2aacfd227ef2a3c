//! Opening connections to a push service through the guard, and learning which HTTP version
//! it speaks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use volley_provider::pool::{connect_any, describe_tls_error, Resolve};

use crate::guard::{Guard, Refusal};

/// The guard as one origin's resolver. It remembers the last refusal, so that a connect
/// failure caused by the guard (a name that started resolving to a private address) is
/// reported as the refusal it is, not as a transient connect error.
pub(crate) struct GuardResolver {
    guard: Arc<Guard>,
    last_refusal: Mutex<Option<Refusal>>,
}

impl GuardResolver {
    pub(crate) fn new(guard: Arc<Guard>) -> Self {
        GuardResolver {
            guard,
            last_refusal: Mutex::new(None),
        }
    }

    /// The checked addresses of `host`, recording the outcome.
    pub(crate) async fn check(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let result = self.guard.resolve(host, port).await;
        *self.last_refusal.lock() = result.as_ref().err().cloned();
        result
    }

    /// The refusal of the most recent check, if it was refused.
    pub(crate) fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal.lock().clone()
    }
}

impl Resolve for GuardResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, String>> + Send + 'a>> {
        Box::pin(async move { self.check(host, port).await.map_err(|r| r.to_string()) })
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The guard refused the host or its addresses: nothing was contacted.
    Refused(Refusal),
    /// TCP or TLS failed; a message for `SendError::Connect`.
    Failed(String),
}

/// TCP to the guard-checked addresses of `host`, then TLS with `tls`'s ALPN offer.
pub(crate) async fn connect_tls(
    resolver: &GuardResolver,
    tls: &TlsConnector,
    server_name: &ServerName<'static>,
    host: &str,
    port: u16,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let addresses = resolver
        .check(host, port)
        .await
        .map_err(ConnectError::Refused)?;
    let tcp = connect_any(&addresses)
        .await
        .map_err(ConnectError::Failed)?;
    // Requests are small and latency-bound; never let Nagle hold one back.
    let _ = tcp.set_nodelay(true);
    tls.connect(server_name.clone(), tcp)
        .await
        .map_err(|e| ConnectError::Failed(describe_tls_error(e)))
}
