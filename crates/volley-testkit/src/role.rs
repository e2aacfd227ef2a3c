//! Running a node role on a thread of its own.
//!
//! Each role gets its own current-thread Tokio runtime on its own OS thread: on a 2-core
//! machine that measured faster for HTTP/2 than one shared multi-thread runtime, it keeps one
//! role's load from delaying another's timers, and it lets a test kill a role the way a crash
//! would — dropping the runtime drops every task and socket of that role at once.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use volley_config::Config;

/// A role running on its own thread.
#[derive(Debug)]
pub struct RoleHandle {
    name: String,
    drain: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts `role` on a new thread. `role` receives the future that resolves when the role
/// should drain and stop.
pub fn spawn_role<F, Fut>(name: &str, role: F) -> anyhow::Result<RoleHandle>
where
    F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let thread_name = name.to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("volley-{name}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let drain = Box::pin(async move {
                let _ = drain_rx.await;
            });
            let result = runtime.block_on(async move {
                tokio::select! {
                    result = role(drain) => result,
                    // A kill drops the runtime below with everything in it, like a crash.
                    Ok(()) = kill_rx => Ok(()),
                }
            });
            if let Err(error) = &result {
                tracing::error!(role = %thread_name, %error, "role failed");
            }
            drop(runtime);
            result
        })?;
    Ok(RoleHandle {
        name: name.to_owned(),
        drain: Some(drain_tx),
        kill: Some(kill_tx),
        thread: Some(thread),
    })
}

/// A listener on `127.0.0.1:0` (non-blocking) for a role's ops port.
pub fn ops_listener() -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Starts a controller on `listener`, its ops port on `ops` (both non-blocking), on a new
/// thread.
pub fn spawn_controller(
    config: Config,
    listener: std::net::TcpListener,
    ops: std::net::TcpListener,
    links: volley_contracts::Links,
) -> anyhow::Result<RoleHandle> {
    spawn_role("controller", move |drain| async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let ops = tokio::net::TcpListener::from_std(ops)?;
        volley_controller::run(config, listener, ops, links, drain).await?;
        Ok(())
    })
}

impl RoleHandle {
    /// Asks the role to drain and waits for its thread to end.
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(drain) = self.drain.take() {
            let _ = drain.send(());
        }
        self.join()
    }

    /// Ends the role at once, as a crash would: its tasks and sockets are dropped.
    pub fn kill(mut self) -> anyhow::Result<()> {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("role {} panicked", self.name))?,
            None => Ok(()),
        }
    }
}

impl Drop for RoleHandle {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let _ = self.join();
    }
}
