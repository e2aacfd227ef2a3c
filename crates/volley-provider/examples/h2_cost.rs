//! Client CPU per request through [`volley_provider::Pool`].
//!
//! A minimal `h2` server runs on its own OS thread with its own current-thread runtime; the
//! pool runs on the main thread's current-thread runtime, so the main thread's CPU time is
//! the whole client cost (pool, h2, rustls, tokio; connecting happens once and is included).
//! CPU time per thread comes from `/proc/thread-self/schedstat` (nanoseconds on CPU).
//!
//! Requests are APNs-shaped: `POST /3/device/<64 hex>` with a ~200-byte bearer JWT, topic,
//! push type and priority headers, and a 211-byte body; the server answers 200 with no body.
//!
//! ```text
//! cargo run --release -p volley-provider --example h2_cost -- [requests] [connections] [in-flight] [tls|h2c] [pool|bare]
//! ```
//! Defaults: 200000 requests, 4 connections, 400 in flight (100 per connection), TLS. A fifth
//! argument `bare` runs the same load over h2 connections driven without the pool (the floor
//! any h2 client pays), so that the pool's own share can be read as a ratio within one run.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use volley_provider::tls::TlsOptions;
use volley_provider::{Pool, PoolConfig};

fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(ns)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| args.get(i).map_or(default, |a| a.parse().unwrap());
    let requests = arg(0, 200_000);
    let connections = arg(1, 4);
    let in_flight = arg(2, 400);
    let tls = args.get(3).map(String::as_str) != Some("h2c");
    // "bare": the same load on h2 connections driven without the pool, as the baseline.
    let bare = args.get(4).map(String::as_str) == Some("bare");

    let dir = tempfile::tempdir().unwrap();
    let (server_config, ca_path) = if tls {
        let (config, ca) = server_tls();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca).unwrap();
        (Some(config), Some(path))
    } else {
        (None, None)
    };

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (cpu_tx, cpu_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = thread_cpu();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = server_config.map(tokio_rustls::TlsAcceptor::from);
            let accept = async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let _ = tcp.set_nodelay(true);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match acceptor {
                            Some(acceptor) => serve(acceptor.accept(tcp).await.unwrap()).await,
                            None => serve(tcp).await,
                        }
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stop_rx => {}
            }
        });
        cpu_tx.send(thread_cpu() - start).unwrap();
    });

    let scheme = if tls { "https" } else { "http" };
    let mut config = PoolConfig::new(format!("{scheme}://{addr}").parse().unwrap());
    config.connections = connections;
    config.tls = TlsOptions {
        extra_ca_pem: ca_path,
        only_extra_ca: tls,
        client_identity: None,
    };
    let pool = Pool::new(config).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let authorization = format!("bearer {}", "x".repeat(200));
    let body = Bytes::from(vec![b'{'; 211]);
    let cpu_start = thread_cpu();
    let wall_start = Instant::now();
    let bare_connections = if bare {
        let connector = tls.then(|| {
            let options = TlsOptions {
                extra_ca_pem: Some(dir.path().join("ca.pem")),
                only_extra_ca: true,
                client_identity: None,
            };
            tokio_rustls::TlsConnector::from(volley_provider::tls::client_config(&options).unwrap())
        });
        runtime.block_on(bare_connect(addr, connector, connections))
    } else {
        Vec::new()
    };
    let bare_connections = Rc::new(bare_connections);
    let failures = runtime.block_on(async {
        let remaining = Rc::new(Cell::new(requests));
        let failures = Rc::new(Cell::new(0usize));
        let local = tokio::task::LocalSet::new();
        for worker in 0..in_flight {
            let (pool, remaining, failures) = (pool.clone(), remaining.clone(), failures.clone());
            let bare_connections = bare_connections.clone();
            let (authorization, body) = (authorization.clone(), body.clone());
            local.spawn_local(async move {
                let path = format!("/3/device/{worker:064x}");
                while remaining.get() > 0 {
                    remaining.set(remaining.get() - 1);
                    let make = || {
                        http::Request::post(path.as_str())
                            .header("authorization", authorization.as_str())
                            .header("apns-topic", "com.example.app")
                            .header("apns-push-type", "alert")
                            .header("apns-priority", "10")
                            .body(())
                            .unwrap()
                    };
                    if !bare_connections.is_empty() {
                        let send = bare_connections[worker % bare_connections.len()].clone();
                        let uri = format!("{scheme}://{addr}{path}");
                        let mut request = make();
                        *request.uri_mut() = uri.parse().unwrap();
                        if !bare_send(send, request, body.clone()).await {
                            failures.set(failures.get() + 1);
                        }
                        continue;
                    }
                    match pool.send(make, body.clone()).await {
                        Ok(response) if response.status == 200 => {}
                        _ => failures.set(failures.get() + 1),
                    }
                }
            });
        }
        local.await;
        failures.get()
    });
    let wall = wall_start.elapsed();
    let client_cpu = thread_cpu() - cpu_start;

    // The caller's share of that: building the request heads, measured alone.
    let path = format!("/3/device/{:064x}", 7);
    let build_start = thread_cpu();
    for _ in 0..requests {
        let request = http::Request::post(path.as_str())
            .header("authorization", authorization.as_str())
            .header("apns-topic", "com.example.app")
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .body(())
            .unwrap();
        std::hint::black_box(request);
    }
    let build_cpu = thread_cpu() - build_start;
    drop(pool);
    stop_tx.send(()).unwrap();
    let server_cpu = cpu_rx.recv().unwrap();
    server.join().unwrap();

    let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / requests as f64;
    println!(
        "{}: {requests} requests, {connections} connections x {} streams, {}: {:.0} req/s, \
         client {:.2} CPU-us/req (of which building the request head {:.2}), \
         server {:.2} CPU-us/req, {failures} failures",
        if bare { "bare h2" } else { "pool" },
        in_flight / connections.max(1),
        if tls { "tls" } else { "h2c" },
        requests as f64 / wall.as_secs_f64(),
        per(client_cpu),
        per(build_cpu),
        per(server_cpu),
    );
}

/// Opens `n` h2 connections without the pool.
async fn bare_connect(
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    n: usize,
) -> Vec<h2::client::SendRequest<Bytes>> {
    let mut connections = Vec::new();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let send = match &tls {
            Some(connector) => {
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let io = connector.connect(name, tcp).await.unwrap();
                let (send, connection) = h2::client::handshake(io).await.unwrap();
                tokio::spawn(connection);
                send
            }
            None => {
                let (send, connection) = h2::client::handshake(tcp).await.unwrap();
                tokio::spawn(connection);
                send
            }
        };
        connections.push(send);
    }
    connections
}

/// One request on a bare h2 connection: the minimum any h2 client does.
async fn bare_send(
    send: h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> bool {
    let Ok(mut send) = send.ready().await else {
        return false;
    };
    let Ok((response, mut stream)) = send.send_request(request, false) else {
        return false;
    };
    let _ = stream.send_data(body, true);
    let Ok(response) = response.await else {
        return false;
    };
    let mut recv = response.into_body();
    while let Some(Ok(chunk)) = recv.data().await {
        let _ = recv.flow_control().release_capacity(chunk.len());
    }
    true
}

/// Answers every request 200 with no body, as APNs does on success.
async fn serve<T>(io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut connection = h2::server::Builder::new()
        .max_concurrent_streams(1000)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let response = http::Response::builder().status(200).body(()).unwrap();
            let _ = respond.send_response(response, true);
        });
    }
}

fn server_tls() -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    (Arc::new(config), ca.pem())
}
