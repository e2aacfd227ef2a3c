//! `volley certs`: a cluster CA and one certificate per node, for mutual TLS on the links
//! between nodes (see `docs/security.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use volley_contracts::tls::{write_file, ClusterCa, NodeIdentity, NodeRole};

/// The CA certificate's file name in a certificates directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a certificates directory; keep it off the nodes.
pub const CA_KEY: &str = "ca-key.pem";

/// `volley certs`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA in DIR: `ca.pem` (give it to every node) and `ca-key.pem` (keep it
    /// off the nodes; it signs their certificates).
    Init {
        /// The certificates directory (created if missing).
        dir: PathBuf,
    },
    /// Issue a node certificate and key signed by the CA in DIR: `ROLE-NAME.pem` and
    /// `ROLE-NAME-key.pem`, and print the configuration that uses them.
    Issue {
        /// The node's role: front, controller or agent.
        #[arg(long)]
        role: NodeRole,
        /// The node's name (a-z, 0-9 and -), shown in the peers' logs.
        #[arg(long)]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// The certificates directory holding the CA.
        dir: PathBuf,
    },
}

/// Runs a `volley certs` command.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir } => init(&dir),
        CertsCommand::Issue {
            role,
            name,
            days,
            dir,
        } => issue(&dir, role, &name, Duration::from_secs(days * 24 * 3600)),
    }
}

fn init(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = ClusterCa::generate()?;
    write_file(&dir.join(CA_CERT), &ca.cert_pem(), false)?;
    write_file(&dir.join(CA_KEY), &ca.key_pem(), true)?;
    println!(
        "cluster CA written to {dir}/{CA_CERT} (give it to every node) and {dir}/{CA_KEY} \
         (keep it off the nodes)\nnext, one certificate per node: volley certs issue --role \
         controller --name c1 {dir}",
        dir = dir.display()
    );
    Ok(())
}

fn issue(dir: &Path, role: NodeRole, name: &str, valid_for: Duration) -> anyhow::Result<()> {
    let key_file = dir.join(CA_KEY);
    let key_pem = std::fs::read_to_string(&key_file).with_context(|| {
        format!(
            "cannot read the CA key {} (create a CA with `volley certs init {}`)",
            key_file.display(),
            dir.display()
        )
    })?;
    let ca = ClusterCa::from_key_pem(&key_pem)?;
    let identity = ca.issue(role, name, valid_for)?;
    let (cert, key) = identity.write(dir)?;
    // Read back as the node will, so that a mismatched ca.pem shows now.
    let ca_file = dir.join(CA_CERT);
    NodeIdentity::from_files(&ca_file, &cert, &key)?;
    println!(
        "# {role} {name}: copy the three files to its host and add to its configuration\n\
         [cluster]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}
