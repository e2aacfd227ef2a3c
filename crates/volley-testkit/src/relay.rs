//! A user-space TCP relay: accepts on one address and forwards every connection to another.
//!
//! The hosts of [`crate::hosts`] reach the root namespace only at its uplink address
//! ([`crate::hosts::Hosts::root_addr`]), while a server the test script started there (the
//! throwaway PostgreSQL of `scripts/test`) listens on loopback. A relay on the uplink address
//! lets the hosts' processes reach it, the way a database on a host of its own would be
//! reached: cutting a host's link cuts its sessions through the relay too.
//!
//! The relay runs on a thread of its own with its own Tokio runtime, so that a test blocking
//! its runtime's workers (waiting on log lines) never stalls the traffic it carries. Dropping
//! the [`Relay`] stops it and closes every connection it carries.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running relay; see the module documentation.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on `listen` (port 0: any free port) and forwards each connection to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Relay> {
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("binding the relay on {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("relay-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the relay's runtime starts");
                // Dropping the runtime at the end drops every connection task: their sockets
                // close.
                runtime.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).expect("the relay's listener registers");
                    tokio::select! {
                        _ = stopped => {}
                        () = accept(listener, target) => {}
                    }
                });
            })
            .context("starting the relay's thread")?;
        Ok(Relay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it accepts on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Accepts connections and forwards each on a task of its own.
async fn accept(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let mut inbound = inbound;
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            // Ends when either side closes or fails; both are then dropped.
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn forwards_both_ways_and_stops_on_drop() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    socket.read_exact(&mut buf).await.unwrap();
                    buf.reverse();
                    socket.write_all(&buf).await.unwrap();
                });
            }
        });
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), target).unwrap();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"olleh");

        let addr = relay.addr();
        drop(relay);
        // Its connections are closed and it accepts no more.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap_or(0), 0);
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
