//! How a role's links to the other nodes are secured, from its configuration.

use anyhow::bail;
use std::time::Duration;
use volley_config::ClusterConfig;

use volley_contracts::tls::{IdentityFiles, NodeRole};
use volley_contracts::{Links, Reload};

/// Mutual TLS with the certificate `cluster.*` names, which must be a `role` certificate; or
/// plain TCP when `cluster.insecure` (or `--insecure-links`) says so, with a warning. A role
/// with neither does not start: its error names the keys and the commands that make them.
pub fn for_role(cluster: &ClusterConfig, role: NodeRole, insecure: bool) -> anyhow::Result<Links> {
    if insecure || cluster.insecure {
        tracing::warn!(
            %role,
            "links between nodes are NOT secured (--insecure-links / cluster.insecure): \
             anyone who reaches this node's port is trusted as any role"
        );
        return Ok(Links::Insecure);
    }
    let (Some(ca), Some(cert), Some(key)) =
        (&cluster.ca_file, &cluster.cert_file, &cluster.key_file)
    else {
        bail!(
            "the links between nodes are mutual TLS: the {role} needs cluster.ca_file, \
             cluster.cert_file and cluster.key_file (VOLLEY_CLUSTER__CA_FILE, ...). Make them \
             with `volley certs init DIR` and `volley certs issue --role {role} --name NAME DIR`; \
             or, on a network nobody else reaches, start with --insecure-links \
             (cluster.insecure = true)"
        );
    };
    let files = IdentityFiles {
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
    };
    let identity = files.load()?;
    if identity.role() != role {
        bail!(
            "cluster.cert_file = {} is a {} certificate; this node is a {role} (issue one with \
             `volley certs issue --role {role} --name NAME DIR`)",
            cert.display(),
            identity.role()
        );
    }
    let days = (identity.not_after() - now()) / 86_400;
    tracing::info!(%role, name = identity.name(), expires_in_days = days, "links secured with mutual TLS");
    if days < 30 {
        tracing::warn!(%role, expires_in_days = days, "this node's certificate expires soon");
    }
    Ok(Links::tls_from_files(files)?)
}

/// How often a node looks at its certificate files for a change (a renewal by cert-manager,
/// certbot or a configuration-management run), besides each SIGHUP.
pub const RELOAD_POLL: Duration = Duration::from_secs(10);

/// Reloads the node's certificate, key and CA on SIGHUP and whenever their files change
/// (looked at every [`RELOAD_POLL`]): new links use the new certificate, links already open
/// keep theirs, so nothing in flight is dropped. Files that do not make a valid identity
/// (half-written, a key that is not the certificate's, another role) leave the current one
/// in place, with an error in the log naming the file, logged and counted once per failure
/// (and again on each SIGHUP). Nothing to do on insecure links or an identity made in memory
/// (`volley standalone`, `demo`).
///
/// Call it first thing on the role's runtime: SIGHUP ends a process that has not asked for
/// it, so the handler is installed here, before the role starts its work.
pub fn watch(links: Links) {
    if !links.reloadable() {
        return;
    }
    #[cfg(unix)]
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; certificates are still reloaded when their files change");
            None
        }
    };
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut last_failure: Option<String> = None;
        loop {
            #[cfg(unix)]
            let signalled = tokio::select! {
                _ = poll.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let signalled = {
                poll.tick().await;
                false
            };
            // File reads and a signature check: off the role's one runtime thread, in case
            // the files sit on a slow mount.
            let reloading = links.clone();
            let result = match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(result) => result,
                Err(error) => {
                    tracing::error!(%error, "link certificate reload panicked");
                    continue;
                }
            };
            match result {
                Ok(Reload::Reloaded {
                    name,
                    previous_not_after,
                    not_after,
                }) => {
                    last_failure = None;
                    tracing::info!(
                        name,
                        previous_expires_in_days = (previous_not_after - now()) / 86_400,
                        expires_in_days = (not_after - now()) / 86_400,
                        on = if signalled { "SIGHUP" } else { "file change" },
                        "link certificate reloaded; new links use it"
                    );
                }
                Ok(Reload::Unchanged) => {
                    last_failure = None;
                    if signalled {
                        tracing::info!("SIGHUP: the link certificate files are unchanged");
                    }
                }
                Err(error) => {
                    let error = error.to_string();
                    if signalled || last_failure.as_ref() != Some(&error) {
                        links.count_reload_failure();
                        tracing::error!(%error, "link certificate not reloaded; the node keeps its current one");
                    }
                    last_failure = Some(error);
                }
            }
        }
    });
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
