//! Invalid-token webhooks: the controller POSTs the tokens providers called invalid to each
//! app's `[apps.webhook]` receiver, in batches, signed, until the receiver acknowledges them.
//!
//! Durability: a chunk's invalid tokens become outbox entries written in the **same** store
//! transaction as the chunk's report, and an entry leaves the store only after the receiver
//! answered 2xx. A controller restart therefore resends every entry not acknowledged yet
//! (at least once across crashes); in the normal case each entry is sent once per job, and
//! retries of one batch carry the same `batch_id` so that a receiver can drop a repeat.
//!
//! One sender task per app: it takes the oldest entries of one job (up to `batch_size`
//! tokens), keeps that batch fixed until it is acknowledged, and backs off exponentially
//! (100 ms doubling up to `max_backoff`, with jitter) between failed attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use volley_config::WebhookConfig;
use volley_contracts::{InvalidToken, JobId, WebhookStat};

use crate::store::{EntryKey, Store, StoredEntry, Write};

/// The first pause after a failed attempt; it doubles up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// An HTTP/1.1 client for `https://` (rustls with ring) and `http://` receivers.
type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug)]
struct Entry {
    key: EntryKey,
    tokens: Vec<InvalidToken>,
}

/// One app's receiver, queue and counters.
#[derive(Debug)]
struct AppOutbox {
    app: String,
    config: WebhookConfig,
    client: WebhookClient,
    queue: Mutex<VecDeque<Entry>>,
    wake: Notify,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// Every app's webhook outbox.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    apps: HashMap<String, Arc<AppOutbox>>,
}

impl Outbox {
    /// An outbox per app; fails when an app's `ca_file` cannot be used.
    pub(crate) fn new(webhooks: HashMap<String, WebhookConfig>) -> Result<Outbox, String> {
        let mut apps = HashMap::new();
        for (app, config) in webhooks {
            let client = client(&config).map_err(|error| format!("apps.{app}.webhook: {error}"))?;
            let outbox = AppOutbox {
                app: app.clone(),
                config,
                client,
                queue: Mutex::default(),
                wake: Notify::new(),
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
            };
            apps.insert(app, Arc::new(outbox));
        }
        Ok(Outbox { apps })
    }

    /// Whether `app` has a webhook.
    pub(crate) fn has(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    /// Splits a chunk's invalid tokens into stored entries of at most `batch_size` tokens.
    pub(crate) fn entries_for(
        &self,
        app: &str,
        job: JobId,
        chunk: u32,
        tokens: Vec<InvalidToken>,
    ) -> Vec<(EntryKey, StoredEntry)> {
        let Some(outbox) = self.apps.get(app) else {
            return Vec::new();
        };
        tokens
            .chunks(outbox.config.batch_size.max(1))
            .enumerate()
            .map(|(part, tokens)| {
                (
                    (job.0.as_u128(), chunk, part as u32),
                    StoredEntry {
                        app: app.to_owned(),
                        tokens: tokens.to_vec(),
                    },
                )
            })
            .collect()
    }

    /// Queues entries (already in the store, or about to be) for sending.
    pub(crate) fn push(&self, entries: Vec<(EntryKey, StoredEntry)>) {
        let mut woken = Vec::new();
        for (key, entry) in entries {
            let Some(outbox) = self.apps.get(&entry.app) else {
                continue;
            };
            outbox.queue.lock().push_back(Entry {
                key,
                tokens: entry.tokens,
            });
            if !woken
                .iter()
                .any(|a: &Arc<AppOutbox>| Arc::ptr_eq(a, outbox))
            {
                woken.push(outbox.clone());
            }
        }
        for outbox in woken {
            outbox.wake.notify_one();
        }
    }

    /// Takes back the entries found in the store; drops those of apps without a webhook now.
    pub(crate) fn restore(&self, store: &Store, entries: Vec<(EntryKey, StoredEntry)>) {
        let (keep, orphans): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(_, entry)| self.has(&entry.app));
        if !orphans.is_empty() {
            tracing::warn!(
                batches = orphans.len(),
                "dropping invalid-token batches of apps that no longer have a webhook"
            );
            store.write_later(Write::WebhookAcked {
                keys: orphans.into_iter().map(|(key, _)| key).collect(),
            });
        }
        if !keep.is_empty() {
            tracing::info!(
                batches = keep.len(),
                "resending unacknowledged invalid-token batches"
            );
        }
        self.push(keep);
    }

    /// Starts one sender per app.
    pub(crate) fn spawn_senders(&self, store: Store, stop: CancellationToken) {
        for outbox in self.apps.values() {
            tokio::spawn(send_loop(outbox.clone(), store.clone(), stop.clone()));
        }
    }

    pub(crate) fn stats(&self) -> Vec<WebhookStat> {
        let mut stats: Vec<WebhookStat> = self
            .apps
            .values()
            .map(|outbox| WebhookStat {
                app: outbox.app.clone(),
                pending_batches: outbox.queue.lock().len() as u64,
                delivered_batches: outbox.delivered.load(Ordering::Relaxed),
                failed_attempts: outbox.failed.load(Ordering::Relaxed),
            })
            .collect();
        stats.sort_by(|a, b| a.app.cmp(&b.app));
        stats
    }
}

/// A batch being sent: how many queue entries it covers, and its body.
struct Batch {
    entries: usize,
    id: String,
    body: Bytes,
}

#[derive(Serialize)]
struct Body<'a> {
    batch_id: &'a str,
    app: &'a str,
    job: String,
    tokens: Vec<TokenView<'a>>,
}

#[derive(Serialize)]
struct TokenView<'a> {
    platform: &'static str,
    token: &'a str,
    reason: &'a str,
    timestamp: Option<u64>,
}

/// The oldest entries of the first job in the queue, up to `batch_size` tokens.
fn next_batch(outbox: &AppOutbox) -> Option<Batch> {
    let queue = outbox.queue.lock();
    let first = queue.front()?;
    let job = first.key.0;
    let mut tokens = Vec::new();
    let mut entries = 0;
    for entry in queue.iter() {
        if entry.key.0 != job
            || (entries > 0 && tokens.len() + entry.tokens.len() > outbox.config.batch_size)
        {
            break;
        }
        tokens.extend(entry.tokens.iter().map(|t| TokenView {
            platform: t.platform.as_str(),
            token: &t.token,
            reason: &t.reason,
            timestamp: t.timestamp_ms,
        }));
        entries += 1;
    }
    let job_id = JobId(uuid::Uuid::from_u128(job));
    // Derived from the entries it covers, so every retry of the batch has the same id.
    let (_, chunk, part) = first.key;
    let id = format!("{job_id}:{chunk}.{part}:{entries}");
    let body = serde_json::to_vec(&Body {
        batch_id: &id,
        app: &outbox.app,
        job: job_id.to_string(),
        tokens,
    })
    .ok()?;
    Some(Batch {
        entries,
        id,
        body: Bytes::from(body),
    })
}

/// `t=<unix seconds>,v1=<hex of HMAC-SHA256(secret, "<t>." + body)>`, as Stripe signs its
/// webhooks: the time is signed with the body, so a receiver that refuses signatures older
/// than a few minutes cannot be fed a recorded request again. Each attempt is signed anew.
pub(crate) fn sign(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    let t = unix_seconds.to_string();
    context.update(t.as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let mut out = String::with_capacity(t.len() + 8 + 64);
    out.push_str("t=");
    out.push_str(&t);
    out.push_str(",v1=");
    for byte in tag.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// The app's client: the public web roots plus `ca_file`, ring as the only crypto provider.
fn client(config: &WebhookConfig) -> Result<WebhookClient, String> {
    let options = volley_provider::tls::TlsOptions {
        extra_ca_pem: config.ca_file.clone(),
        ..Default::default()
    };
    let mut tls =
        (*volley_provider::tls::client_config(&options).map_err(|e| e.to_string())?).clone();
    // The connector builder offers http/1.1 itself and insists on an empty list here.
    tls.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

async fn post(client: &WebhookClient, config: &WebhookConfig, batch: &Batch) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = sign(config.secret.expose().as_bytes(), now, &batch.body);
    let request = http::Request::post(config.url.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "volley-webhook")
        .header("x-volley-signature", signature.as_str())
        .header("x-volley-batch-id", batch.id.as_str())
        .body(Full::new(batch.body.clone()))
        .map_err(|error| format!("cannot build the request: {error}"))?;
    let response = tokio::time::timeout(config.timeout, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|error| error.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

/// A pseudo-random fraction in [0.5, 1) for back-off jitter, without a dependency.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    0.5 + f64::from(nanos % 1000) / 2000.0
}

async fn send_loop(outbox: Arc<AppOutbox>, store: Store, stop: CancellationToken) {
    let mut current: Option<Batch> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if current.is_none() {
            current = next_batch(&outbox);
        }
        let Some(batch) = &current else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = outbox.wake.notified() => continue,
            }
        };
        match post(&outbox.client, &outbox.config, batch).await {
            Ok(()) => {
                let keys: Vec<EntryKey> = outbox
                    .queue
                    .lock()
                    .drain(..batch.entries)
                    .map(|entry| entry.key)
                    .collect();
                tracing::debug!(app = %outbox.app, batch = %batch.id, "invalid-token batch acknowledged");
                // Losing this write in a crash only resends the batch, with the same id.
                store.write_later(Write::WebhookAcked { keys });
                outbox.delivered.fetch_add(1, Ordering::Relaxed);
                current = None;
                backoff = FIRST_BACKOFF;
            }
            Err(error) => {
                outbox.failed.fetch_add(1, Ordering::Relaxed);
                let pause = backoff.mul_f64(jitter());
                tracing::warn!(app = %outbox.app, batch = %batch.id, %error, retry_in_ms = pause.as_millis() as u64, "invalid-token webhook failed");
                backoff = (backoff * 2).min(outbox.config.max_backoff.max(FIRST_BACKOFF));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        // RFC 4231 test case 2, its message split as `t.body`: "what do ya want " is not a
        // time, but the HMAC is over the same bytes.
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let direct = ring::hmac::sign(&key, b"1700000000.body");
        let hex: String = direct.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            sign(b"Jefe", 1_700_000_000, b"body"),
            format!("t=1700000000,v1={hex}")
        );
        let whole = ring::hmac::sign(&key, b"what do ya want for nothing?");
        let whole: String = whole.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(whole, expected, "the HMAC itself is RFC 4231's");
        assert_ne!(sign(b"Jefe", 1, b"body"), sign(b"Jefe", 2, b"body"));
    }

    #[test]
    fn batches_hold_one_job_and_at_most_batch_size_tokens() {
        let config = WebhookConfig {
            url: "http://127.0.0.1:1/".into(),
            secret: volley_config::Secret::new("0123456789abcdef"),
            batch_size: 3,
            timeout: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            ca_file: None,
        };
        let outbox = Outbox::new(HashMap::from([("shop".to_owned(), config)])).unwrap();
        let token = |i: u32| InvalidToken {
            platform: volley_contracts::Platform::Fcm,
            token: format!("t{i}"),
            reason: "UNREGISTERED".into(),
            timestamp_ms: None,
        };
        let (a, b) = (JobId::new(), JobId::new());
        let mut entries = outbox.entries_for("shop", a, 0, (0..5).map(token).collect());
        assert_eq!(entries.len(), 2, "5 tokens split into parts of 3 and 2");
        entries.extend(outbox.entries_for("shop", a, 1, vec![token(5)]));
        entries.extend(outbox.entries_for("shop", b, 0, vec![token(6)]));
        assert!(outbox.entries_for("other", b, 0, vec![token(7)]).is_empty());
        outbox.push(entries);
        let app = &outbox.apps["shop"];
        let first = next_batch(app).unwrap();
        assert_eq!(first.entries, 1);
        app.queue.lock().pop_front();
        // Parts of 2 and 1 tokens of job a fit together; job b waits for its own batch.
        let second = next_batch(app).unwrap();
        assert_eq!(second.entries, 2);
        let body: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
        assert_eq!(body["job"], a.to_string());
        assert_eq!(body["tokens"].as_array().unwrap().len(), 3);
        assert_eq!(body["batch_id"], second.id);
    }
}
