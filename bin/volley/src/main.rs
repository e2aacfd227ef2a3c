//! The `volley` binary: parses the command line and runs one of Volley's roles or tools.

use clap::{Parser, Subcommand};

/// Volley: a distributed push-notification engine for APNs and FCM.
#[derive(Debug, Parser)]
#[command(name = "volley", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Placeholder until the roles land.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("volley {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
