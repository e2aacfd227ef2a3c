//! Runs the fake FCM from the command line (the `volley fake-fcm` subcommand without the rest of
//! the binary).

use clap::Parser;

/// Fake FCM HTTP v1 API.
#[derive(Parser)]
#[command(name = "fake_fcm")]
struct Cli {
    #[command(flatten)]
    args: volley_fake::cli::FakeFcmArgs,
}

fn main() -> Result<(), volley_fake::FakeError> {
    volley_fake::cli::run_fcm(Cli::parse().args)
}
