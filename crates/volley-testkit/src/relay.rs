//! A user-space relay: accepts on one address and forwards every connection to another, byte
//! for byte (a TLS session passes through it end to end). Either end may be a TCP address or a
//! unix socket ([`Endpoint`]).
//!
//! The hosts of [`crate::hosts`] reach the root namespace only at its uplink address
//! ([`crate::hosts::Hosts::root_addr`]), while a server the test script started there (the
//! throwaway PostgreSQL of `scripts/test`) listens on loopback. A relay on the uplink address
//! lets the hosts' processes reach it, the way a database on a host of its own would be
//! reached: cutting a host's link cuts its sessions through the relay too.
//!
//! A test run by a user other than root runs in network namespaces of its own
//! ([`crate::hosts::in_namespaces`]), where the machine's loopback is out of reach but its
//! files are not: a relay from a unix socket to the server, in the process that started it,
//! carries the connections in.
//!
//! The relay runs on a thread of its own with its own Tokio runtime, so that a test blocking
//! its runtime's workers (waiting on log lines) never stalls the traffic it carries. Dropping
//! the [`Relay`] stops it and closes every connection it carries (and removes its unix socket).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::oneshot;

/// Where a relay accepts, or where it forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket's path.
    Unix(PathBuf),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A running relay; see the module documentation.
#[derive(Debug)]
pub struct Relay {
    /// What it accepts on (a TCP port 0 resolved to the port bound).
    local: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A bound listener, before the relay's runtime takes it.
enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Relay {
    /// Listens on `listen` (a TCP port 0: any free port; a unix socket: a path where nothing
    /// is yet) and forwards each connection to `target`.
    pub fn between(listen: Endpoint, target: Endpoint) -> anyhow::Result<Relay> {
        let (bound, local) = match &listen {
            Endpoint::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding the relay on {addr}"))?;
                listener.set_nonblocking(true)?;
                let local = Endpoint::Tcp(listener.local_addr()?);
                (Bound::Tcp(listener), local)
            }
            Endpoint::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("binding the relay on {}", path.display()))?;
                listener.set_nonblocking(true)?;
                (Bound::Unix(listener), listen.clone())
            }
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{local}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the relay's runtime starts");
                // Dropping the runtime at the end drops every connection task: their sockets
                // close.
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = accept(bound, target) => {}
                    }
                });
            })
            .context("starting the relay's thread")?;
        Ok(Relay {
            local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The TCP address it accepts on.
    ///
    /// # Panics
    ///
    /// For a relay that accepts on a unix socket.
    pub fn addr(&self) -> SocketAddr {
        match &self.local {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(path) => panic!("the relay accepts on {}, not TCP", path.display()),
        }
    }
}

/// Accepts connections and forwards each on a task of its own.
async fn accept(bound: Bound, target: Endpoint) {
    match bound {
        Bound::Tcp(listener) => {
            let listener = TcpListener::from_std(listener).expect("the relay's listener registers");
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                tokio::spawn(forward(inbound, target.clone()));
            }
        }
        Bound::Unix(listener) => {
            let listener =
                UnixListener::from_std(listener).expect("the relay's listener registers");
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(forward(inbound, target.clone()));
            }
        }
    }
}

/// Connects to `target` and copies both ways until either side closes or fails; both are then
/// dropped.
async fn forward<S: AsyncRead + AsyncWrite + Unpin>(mut inbound: S, target: Endpoint) {
    match target {
        Endpoint::Tcp(addr) => {
            let Ok(mut outbound) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
        Endpoint::Unix(path) => {
            let Ok(mut outbound) = UnixStream::connect(path).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Endpoint::Unix(path) = &self.local {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers the first five bytes of each connection reversed, and how many
    /// connections it has accepted.
    async fn reversing_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    socket.read_exact(&mut buf).await.unwrap();
                    buf.reverse();
                    socket.write_all(&buf).await.unwrap();
                });
            }
        });
        (target, accepted)
    }

    #[tokio::test]
    async fn forwards_both_ways_and_stops_on_drop() {
        let (target, accepted) = reversing_server().await;
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let relay = Relay::between(listen.into(), target.into()).unwrap();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"olleh");

        let addr = relay.addr();
        drop(relay);
        // Its connections are closed and it relays no more. (Its port is free: another test's
        // socket may have taken it since, so what counts is that nothing reaches the server.)
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap_or(0), 0);
        let before = accepted.load(Ordering::SeqCst);
        if let Ok(mut again) = TcpStream::connect(addr).await {
            let _ = again.write_all(b"hello").await;
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                again.read_exact(&mut buf),
            )
            .await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn carries_connections_through_a_unix_socket() {
        let (target, _) = reversing_server().await;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("relay.sock");
        // TCP in, to a unix socket, and from there to the server: both kinds of each end.
        let inner = Relay::between(Endpoint::Unix(socket.clone()), target.into()).unwrap();
        let outer = Relay::between(
            Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
            Endpoint::Unix(socket.clone()),
        )
        .unwrap();
        let mut client = TcpStream::connect(outer.addr()).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"olleh");

        drop(inner);
        assert!(!socket.exists(), "the relay's socket outlived it");
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap_or(0), 0);
    }
}
