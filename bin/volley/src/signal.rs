//! Shutdown signals: the first SIGTERM or Ctrl-C drains, a second one exits at once.

/// Resolves on the first SIGTERM or Ctrl-C; a second signal ends the process with status 130.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown signal received; draining (send it again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second shutdown signal; exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
