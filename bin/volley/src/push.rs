//! `volley push`: send one notification, or one to every token of a file, through a front, and
//! follow the job to its end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;

use volley_testkit::http::FrontClient;

/// Options of `volley push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The front's base URL.
    #[arg(
        long,
        env = "VOLLEY_FRONT_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub front: String,
    /// The app to send as.
    #[arg(long, env = "VOLLEY_APP")]
    pub app: String,
    /// The app's API key.
    #[arg(long, env = "VOLLEY_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// An APNs device token (repeatable).
    #[arg(long = "apns")]
    pub apns_tokens: Vec<String>,
    /// An FCM registration token (repeatable).
    #[arg(long = "fcm")]
    pub fcm_tokens: Vec<String>,
    /// A Web Push subscription, as the browser's `PushSubscription.toJSON()` gives it
    /// (`{"endpoint": …, "keys": {…}}`), or `@FILE` holding one (repeatable).
    #[arg(long = "webpush")]
    pub webpush: Vec<String>,
    /// A file of tokens, one per line, each `apns:<token>` or `fcm:<token>`.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// The notification's title.
    #[arg(long)]
    pub title: Option<String>,
    /// The notification's body.
    #[arg(long)]
    pub body: Option<String>,
    /// Return after the job is accepted instead of following it.
    #[arg(long)]
    pub no_wait: bool,
}

/// Sends the notification and prints the job's progress.
pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let mut apns = args.apns_tokens.clone();
    let mut fcm = args.fcm_tokens.clone();
    if let Some(file) = &args.tokens_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some(("apns", token)) => apns.push(token.to_owned()),
                Some(("fcm", token)) => fcm.push(token.to_owned()),
                _ => bail!(
                    "{}:{}: expected apns:<token> or fcm:<token>",
                    file.display(),
                    number + 1
                ),
            }
        }
    }
    let mut webpush = Vec::new();
    for given in &args.webpush {
        let text = match given.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
            }
            None => given.clone(),
        };
        let subscription: serde_json::Value = serde_json::from_str(&text)
            .context("--webpush takes a subscription's JSON (or @FILE)")?;
        webpush.push(subscription);
    }
    if apns.is_empty() && fcm.is_empty() && webpush.is_empty() {
        bail!("no token given: use --apns, --fcm, --webpush or --tokens-file");
    }
    let client = FrontClient::new(args.front.clone(), Some(args.api_key.clone()));
    let request = json!({
        "title": args.title,
        "body": args.body,
        "targets": {"apns": apns, "fcm": fcm, "webpush": webpush},
    });
    let response = client
        .post(
            &format!("/v1/apps/{}/notifications", args.app),
            serde_json::to_vec(&request)?,
        )
        .await
        .with_context(|| format!("cannot reach the front at {}", args.front))?;
    if !response.status.is_success() {
        bail!("the front answered {}: {}", response.status, response.body);
    }
    let id = response.body["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "job {id} accepted: {} notifications",
        response.body["accepted"]
    );
    if args.no_wait {
        return Ok(());
    }
    loop {
        let status = client.get(&format!("/v1/jobs/{id}")).await?.body;
        let state = status["state"].as_str().unwrap_or("?").to_owned();
        println!(
            "{state}: delivered {} invalid {} failed {} pending {}",
            status["delivered"], status["invalid"], status["failed"], status["pending"]
        );
        if matches!(state.as_str(), "done" | "cancelled") {
            if let Some(tokens) = status["invalid_tokens"].as_array() {
                for token in tokens {
                    println!(
                        "invalid {} token ({}): {}",
                        token["platform"].as_str().unwrap_or("?"),
                        token["reason"].as_str().unwrap_or("?"),
                        redact(token["token"].as_str().unwrap_or_default())
                    );
                }
            }
            return Ok(());
        }
        if state == "?" {
            bail!("unexpected status: {status}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Shows only the ends of a token: enough to recognise it, not enough to use it.
fn redact(token: &str) -> String {
    if token.len() <= 12 {
        return "…".into();
    }
    format!("{}…{}", &token[..6], &token[token.len() - 4..])
}
