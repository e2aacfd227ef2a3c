//! How a role's links to the other nodes are secured, from its configuration.

use anyhow::bail;
use volley_config::ClusterConfig;
use volley_contracts::tls::{NodeIdentity, NodeRole};
use volley_contracts::Links;

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
    let identity = NodeIdentity::from_files(ca, cert, key)?;
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
    Ok(Links::tls(identity)?)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
