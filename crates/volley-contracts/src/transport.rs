//! tarpc over TCP with bincode, with frame limits raised on both sides.

use std::io;
use std::net::SocketAddr;

use futures::{Stream, StreamExt};
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, ClientMessage, Response};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::{AgentClient, ControllerClient};

/// The largest frame either side accepts.
///
/// A submission carries every token of a job in one frame (a million 64-character APNs tokens
/// are about 68 MB); chunks are far smaller, bounded by the controller's chunk size.
pub const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

type ClientTransport<Req, Resp> = Transport<
    TcpStream,
    Response<Resp>,
    ClientMessage<Req>,
    Bincode<Response<Resp>, ClientMessage<Req>>,
>;

async fn connect<Req, Resp>(addr: impl ToSocketAddrs) -> io::Result<ClientTransport<Req, Resp>>
where
    Req: serde::Serialize,
    Resp: for<'de> serde::Deserialize<'de>,
{
    let mut transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default);
    transport.config_mut().max_frame_length(MAX_FRAME_BYTES);
    let transport = transport.await?;
    transport.get_ref().set_nodelay(true)?;
    Ok(transport)
}

/// Connects to a controller's tarpc server.
pub async fn connect_controller(addr: impl ToSocketAddrs) -> io::Result<ControllerClient> {
    let transport = connect(addr).await?;
    Ok(ControllerClient::new(client::Config::default(), transport).spawn())
}

/// Connects to an agent's tarpc server.
pub async fn connect_agent(addr: impl ToSocketAddrs) -> io::Result<AgentClient> {
    let transport = connect(addr).await?;
    Ok(AgentClient::new(client::Config::default(), transport).spawn())
}

/// The server side of one tarpc connection.
pub type ServerTransport<Req, Resp> = Transport<
    TcpStream,
    ClientMessage<Req>,
    Response<Resp>,
    Bincode<ClientMessage<Req>, Response<Resp>>,
>;

/// Accepts tarpc connections on a bound listener, with the raised frame limit.
///
/// Yields one transport per connection; the caller wraps each in a tarpc channel.
pub fn listen<Req, Resp>(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = (SocketAddr, ServerTransport<Req, Resp>)>
where
    Req: for<'de> serde::Deserialize<'de>,
    Resp: serde::Serialize,
{
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let framed = tokio_util_codec(stream);
                    let transport = tarpc::serde_transport::new(framed, Bincode::default());
                    return Some(((peer, transport), listener));
                }
                Err(error) => {
                    // Accept errors (EMFILE, a reset before accept) are per-connection; keep serving.
                    tracing::warn!(%error, "tarpc accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
    .boxed()
}

fn tokio_util_codec(
    stream: TcpStream,
) -> tarpc::tokio_util::codec::Framed<TcpStream, tarpc::tokio_util::codec::LengthDelimitedCodec> {
    let codec = tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    tarpc::tokio_util::codec::Framed::new(stream, codec)
}
