//! Runs the fake APNs from the command line (the `volley fake-apns` subcommand without the rest of
//! the binary), e.g. for load-testing the fake itself with h2load:
//!
//! `cargo run --release -p volley-fake --example fake_apns -- --listen 127.0.0.1:2197 --skip-auth`

use clap::Parser;

/// Fake APNs provider API.
#[derive(Parser)]
#[command(name = "fake_apns")]
struct Cli {
    #[command(flatten)]
    args: volley_fake::cli::FakeApnsArgs,
}

fn main() -> Result<(), volley_fake::FakeError> {
    volley_fake::cli::run_apns(Cli::parse().args)
}
