//! `volley vapid generate`: a VAPID key pair for an app's Web Push (RFC 8292).

use std::io::Write;

use clap::Subcommand;

/// `volley vapid ...`
#[derive(Debug, Subcommand)]
pub enum VapidCommand {
    /// Make a new key pair. Prints the private key for `[apps.webpush] vapid_private_key`
    /// (an agent's secret) and the public key a web page passes to
    /// `pushManager.subscribe({applicationServerKey})`.
    Generate {
        /// Print JSON (`{"private_key", "public_key"}`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `vapid` command, printing to standard output.
pub fn run(command: VapidCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        VapidCommand::Generate { json } => generate(&mut out, json),
    }
}

fn generate(out: &mut impl Write, json: bool) -> anyhow::Result<()> {
    let key = volley_webpush::vapid::VapidKey::generate();
    let (private, public) = (key.private_base64url(), key.public_base64url());
    if json {
        let document = serde_json::json!({"private_key": private, "public_key": public});
        writeln!(out, "{document}")?;
    } else {
        writeln!(
            out,
            "# A VAPID key pair for [apps.webpush]. Keep the private key secret: it is the\n\
             # app's identity with every push service (agents only).\n\
             vapid_private_key = \"{private}\"\n\
             \n\
             # The public key: the web page subscribes with it as applicationServerKey.\n\
             # public_key = \"{public}\""
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_pair_reads_back_as_the_same_key() {
        let mut out = Vec::new();
        generate(&mut out, true).unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let private = printed["private_key"].as_str().unwrap();
        let key = volley_webpush::vapid::VapidKey::from_base64url(private).unwrap();
        assert_eq!(printed["public_key"], key.public_base64url().as_str());
        assert_eq!(key.public_key().len(), 65);
    }
}
