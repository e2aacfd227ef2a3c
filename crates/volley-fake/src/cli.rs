//! Command-line arguments and entry points for `volley fake-apns`, `volley fake-fcm` and
//! `volley fake-webpush`.
//!
//! Scripted failures by device-token prefix (both fakes; APNs tokens are hex, so are the prefixes):
//!
//! | prefix | fake APNs | fake FCM |
//! |---|---|---|
//! | `badd` | 400 `BadDeviceToken` | 400 INVALID_ARGUMENT naming `message.token` |
//! | `dead` | 410 `Unregistered` with `timestamp` | 404 NOT_FOUND, errorCode UNREGISTERED |
//! | `4030` | 400 `DeviceTokenNotForTopic` | 403 PERMISSION_DENIED, SENDER_ID_MISMATCH |
//! | `4290` | 429 `TooManyRequests` | 429 RESOURCE_EXHAUSTED, QUOTA_EXCEEDED, `retry-after: 1` |
//! | `5000` | 500 `InternalServerError` | 500 INTERNAL |
//! | `5020` | 502 with an HTML body | 502 with an HTML body |
//! | `5030` | 503 `ServiceUnavailable`, `retry-after: 1` | 503 UNAVAILABLE, `retry-after: 1` |
//!
//! The fake Web Push service scripts by subscription-id prefix instead:
//!
//! | prefix | fake Web Push |
//! |---|---|
//! | `dead` | 410 Gone |
//! | `4040` | 404 Not Found |
//! | `4130` | 413 Payload Too Large |
//! | `4290` | 429 Too Many Requests, `retry-after: 1` |
//! | `5000` | 500 Internal Server Error |
//! | `5030` | 503 Service Unavailable, `retry-after: 1` |
//! | `ext` | 201, not decrypted: a subscription whose keys live elsewhere; the body is captured as it came |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{FakeConfig, FakeError, FakeServer, FakeWebPush, FakeWebPushConfig, Latency};

const SCRIPTED_HELP: &str = "\
Scripted failures by device-token prefix (case-insensitive):

  prefix  fake APNs                                   fake FCM
  badd    400 {\"reason\":\"BadDeviceToken\"}              400 INVALID_ARGUMENT naming message.token
  dead    410 {\"reason\":\"Unregistered\",\"timestamp\":ms}  404 NOT_FOUND, errorCode UNREGISTERED
  4030    400 {\"reason\":\"DeviceTokenNotForTopic\"}      403 PERMISSION_DENIED, SENDER_ID_MISMATCH
  4290    429 {\"reason\":\"TooManyRequests\"}             429 RESOURCE_EXHAUSTED, QUOTA_EXCEEDED, retry-after: 1
  5000    500 {\"reason\":\"InternalServerError\"}         500 INTERNAL, errorCode INTERNAL
  5020    502 with an HTML body                       502 with an HTML body
  5030    503 {\"reason\":\"ServiceUnavailable\"}, retry-after: 1
                                                      503 UNAVAILABLE, errorCode UNAVAILABLE, retry-after: 1

Any other token is delivered: APNs answers 200 with apns-id and no body, FCM answers 200 with
{\"name\":\"projects/{p}/messages/{id}\"}.

Stats (JSON) are served at GET /stats on the main port and on --stats-listen (plain HTTP/1.1);
the final stats are printed as JSON on stdout when the fake stops (Ctrl-C or SIGTERM).";

const APNS_AFTER_HELP: &str = "\
Authorisation: 403 MissingProviderToken without `authorization` (unless the client presented a TLS
client certificate), 403 InvalidProviderToken for a malformed JWT or one that does not verify
against --jwt-public-key, 403 ExpiredProviderToken when its iat is over 3600 s old. Then 400
MissingTopic / BadTopic, 400 PayloadEmpty, 413 PayloadTooLarge above 4096 bytes (5120 for
apns-push-type: voip), 400 BadDeviceToken for a non-hex token, 400 BadMessageId for a malformed
apns-id, 400 BadCollapseId above 64 bytes, 400 DuplicateHeaders, 404 BadPath, 405 MethodNotAllowed.
Every answer carries apns-id (echoed, or a fresh upper-case UUID); a 200 has no body.";

const FCM_AFTER_HELP: &str = "\
Authorisation: POST /token with grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer and an
RS256 assertion (iss, aud = this server's /token, scope including
https://www.googleapis.com/auth/firebase.messaging, exp) answers an access token; a bad assertion
gets 400 {\"error\":\"invalid_grant\"}. Sends without a valid, unexpired access token get 401
UNAUTHENTICATED; a project other than --project gets 404.";

const WEBPUSH_AFTER_HELP: &str = "\
Subscriptions: POST /subscribe (optional body {\"id\": \"...\"}, else a random id) answers 201 with
{\"endpoint\": \"https://HOST:PORT/push/{id}\", \"keys\": {\"p256dh\": ..., \"auth\": ...}}, the same for the
same id while the fake runs. Ids are 1 to 256 characters of A-Z a-z 0-9 - . _ ~. With
\"applicationServerKey\" (a VAPID public key, base64url) in the body, pushes signed with another
key are answered 403, as real push services bind a subscription to the key it was made with.
GET /subscriptions?prefix=P&count=N[&dead_every=K] answers 200 with a JSON array of N
subscriptions at once, ids P-0 to P-(N-1), except that with K > 0 every K-th (i % K = K-1)
is dead-i, answered 410 Gone; N at most 2000000, P at most 240 characters (400 otherwise).

POST /push/{id} is checked in this order:
  401 without `Authorization: vapid t=JWT, k=KEY`, or when the JWT is malformed or its
      signature does not verify against k
  403 when it verifies but its claims do not hold: expired, exp over 24 h ahead, aud other
      than https://HOST:PORT, no sub
  400 without TTL, or a TTL that is not a number of seconds
  415 when Content-Encoding is not aes128gcm (a push without body needs none)
  400 for an Urgency other than very-low, low, normal, high; a Topic over 32 characters or
      outside the URL-safe base64 alphabet
  413 for a body over 4096 bytes
  then the scripted prefixes below, then --transient-error-rate (503, retry-after: 1), then
  400 when the body does not decrypt with the subscription's keys (counted: decrypt_failures)
  201 Created with Location: /message/{uuid} and TTL (capped at 2419200 s).

Scripted failures by subscription-id prefix (case-insensitive):

  prefix  answer
  dead    410 Gone
  4040    404 Not Found
  4130    413 Payload Too Large
  4290    429 Too Many Requests, retry-after: 1
  5000    500 Internal Server Error
  5030    503 Service Unavailable, retry-after: 1
  ext     201 without decrypting: a subscription whose keys the fake does not hold (a real
          browser's, a test's own); with --capture the body is kept as it came

Errors have a JSON body {\"code\": N, \"error\": \"reason\", \"message\": \"...\"}.

Stats (JSON) at GET /stats, captured requests at GET /requests, and GET /subscriptions, on the
main port (HTTP/2 or HTTP/1.1 over TLS) and on --stats-listen (plain HTTP/1.1); the final stats
are printed as JSON on stdout when the fake stops (Ctrl-C or SIGTERM).";

/// `volley fake-webpush`: a fake Web Push service (RFC 8030, 8291, 8292).
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = WEBPUSH_AFTER_HELP)]
pub struct FakeWebPushArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Write the generated CA certificate (PEM) here; a temporary file otherwise.
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
    /// Also serve GET /stats, /requests and /subscriptions over plain HTTP/1.1 on this address.
    #[arg(long, value_name = "ADDR")]
    pub stats_listen: Option<SocketAddr>,
    /// Offer only HTTP/1.1 (ALPN http/1.1), to test clients' fallback from HTTP/2.
    #[arg(long)]
    pub http1_only: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to HTTP/2 clients.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_concurrent_streams: u32,
    /// Delay before answering each push: a duration ("5ms") or a uniform range ("1ms..20ms").
    /// Units: us, ms, s.
    #[arg(long, value_parser = parse_latency, value_name = "DURATION[..DURATION]")]
    pub latency: Option<Latency>,
    /// Fraction (0..=1) of pushes answered with a transient 503, retry-after: 1.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub transient_error_rate: f64,
    /// Keep the first N push requests (headers with credentials cut to their scheme, the
    /// decrypted payload, or the body as it came for ext ids, the status) at GET /requests.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub capture: usize,
    /// Worker threads; more than 1 spreads decryption over several cores.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
}

/// Runs the fake Web Push service until Ctrl-C or SIGTERM, then prints the final stats as JSON
/// on stdout.
pub fn run_webpush(args: FakeWebPushArgs) -> Result<(), FakeError> {
    let config = FakeWebPushConfig {
        http1_only: args.http1_only,
        max_concurrent_streams: args.max_concurrent_streams,
        latency: args.latency.unwrap_or(Latency::None),
        transient_error_rate: args.transient_error_rate,
        capture: args.capture,
        ca_out: args.ca_out,
        threads: args.threads,
    };
    let listener = std::net::TcpListener::bind(args.listen)?;
    let stats_listener = args
        .stats_listen
        .map(std::net::TcpListener::bind)
        .transpose()?;
    let server = FakeWebPush::start_with_stats(config, listener, stats_listener)?;
    let protocols = if args.http1_only {
        "HTTP/1.1 only"
    } else {
        "HTTP/2 and HTTP/1.1"
    };
    eprintln!(
        "fake Web Push listening on {} ({protocols})",
        server.origin()
    );
    eprintln!("CA certificate: {}", server.ca_pem_path().display());
    eprintln!(
        "example subscription (POST /subscribe or GET /subscriptions for more): {}",
        serde_json::to_string(&server.subscription("example")).unwrap_or_default()
    );
    announce_observation(server.stats_addr(), server.origin());
    if let Some(addr) = server.stats_addr() {
        eprintln!("subscriptions: http://{addr}/subscriptions?prefix=P&count=N[&dead_every=K]");
    }
    wait_for_signal()?;
    let stats = server.shutdown();
    print_stats(&stats)
}

/// Options both fakes share.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Serve h2c (HTTP/2 with prior knowledge, no TLS) instead of TLS.
    #[arg(long)]
    pub h2c: bool,
    /// Write the generated CA certificate (PEM) here; a temporary file otherwise.
    #[arg(long, value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
    /// Also serve GET /stats over plain HTTP/1.1 on this address.
    #[arg(long, value_name = "ADDR")]
    pub stats_listen: Option<SocketAddr>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_concurrent_streams: u32,
    /// Advertise 1 concurrent stream until a connection's first authorised request, then raise it
    /// to --max-concurrent-streams (as APNs does).
    #[arg(long)]
    pub single_stream_until_auth: bool,
    /// Per connection: after the Nth stream, send GOAWAY (last-stream-id = the Nth) and close.
    #[arg(long, value_name = "N")]
    pub goaway_after: Option<u64>,
    /// Delay before answering each request: a duration ("5ms") or a uniform range ("1ms..20ms").
    /// Units: us, ms, s.
    #[arg(long, value_parser = parse_latency, value_name = "DURATION[..DURATION]")]
    pub latency: Option<Latency>,
    /// Fraction (0..=1) of requests answered with a transient 503 error, retry-after: 1.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    pub transient_error_rate: f64,
    /// Append one line per delivered notification: token, message id, collapse id
    /// (tab-separated), flushed at least every 100 ms.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Keep the first N notification requests whole (headers, body, status; credentials
    /// reduced to their scheme) and serve them as JSON at GET /requests.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub capture: usize,
    /// Accept every request without checking credentials (throughput measurements only).
    #[arg(long)]
    pub skip_auth: bool,
}

/// `volley fake-apns`: a fake APNs provider API.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = format!("{APNS_AFTER_HELP}\n\n{SCRIPTED_HELP}"))]
pub struct FakeApnsArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2197", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Options shared with fake-fcm.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Verify provider tokens (ES256) against this public key (PEM); without it any well-formed
    /// ES256 JWT with a kid is accepted.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Require this apns-topic.
    #[arg(long)]
    pub topic: Option<String>,
}

/// `volley fake-fcm`: a fake FCM HTTP v1 API with its OAuth token endpoint at /token.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = format!("{FCM_AFTER_HELP}\n\n{SCRIPTED_HELP}"))]
pub struct FakeFcmArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Options shared with fake-apns.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Require this project id in /v1/projects/{project}/messages:send.
    #[arg(long)]
    pub project: Option<String>,
    /// Verify OAuth assertions (RS256) against this public key (PEM); without it any well-formed
    /// RS256 assertion is accepted.
    #[arg(long, value_name = "FILE")]
    pub oauth_public_key: Option<PathBuf>,
    /// Lifetime of issued access tokens (e.g. "3600s", "5m").
    #[arg(long, default_value = "3600s", value_parser = parse_duration, value_name = "DURATION")]
    pub access_token_ttl: Duration,
}

/// Runs the fake APNs until Ctrl-C or SIGTERM, then prints the final stats as JSON on stdout.
pub fn run_apns(args: FakeApnsArgs) -> Result<(), FakeError> {
    let mut config = FakeConfig::apns();
    apply_common(&mut config, &args.common);
    config.apns_jwt_public_key_pem = args
        .jwt_public_key
        .map(std::fs::read_to_string)
        .transpose()?;
    config.apns_topic = args.topic;
    serve("fake APNs", config, args.listen, args.common.stats_listen)
}

/// Runs the fake FCM until Ctrl-C or SIGTERM, then prints the final stats as JSON on stdout.
pub fn run_fcm(args: FakeFcmArgs) -> Result<(), FakeError> {
    let mut config = FakeConfig::fcm();
    apply_common(&mut config, &args.common);
    config.fcm_project = args.project;
    config.fcm_oauth_public_key_pem = args
        .oauth_public_key
        .map(std::fs::read_to_string)
        .transpose()?;
    config.fcm_access_token_ttl = args.access_token_ttl;
    serve("fake FCM", config, args.listen, args.common.stats_listen)
}

fn apply_common(config: &mut FakeConfig, common: &CommonArgs) {
    config.tls = !common.h2c;
    config.ca_out = common.ca_out.clone();
    config.max_concurrent_streams = common.max_concurrent_streams;
    config.single_stream_until_auth = common.single_stream_until_auth;
    config.goaway_after = common.goaway_after;
    config.latency = common.latency.clone().unwrap_or(Latency::None);
    config.transient_error_rate = common.transient_error_rate;
    config.record_path = common.record.clone();
    config.capture = common.capture;
    config.skip_auth = common.skip_auth;
}

fn serve(
    what: &str,
    config: FakeConfig,
    listen: SocketAddr,
    stats_listen: Option<SocketAddr>,
) -> Result<(), FakeError> {
    let listener = std::net::TcpListener::bind(listen)?;
    let stats_listener = stats_listen.map(std::net::TcpListener::bind).transpose()?;
    let server = FakeServer::start_with_stats(config, listener, stats_listener)?;
    eprintln!("{what} listening on {}", server.endpoint());
    eprintln!("CA certificate: {}", server.ca_pem_path().display());
    announce_observation(server.stats_addr(), &server.endpoint());
    wait_for_signal()?;
    let stats = server.shutdown();
    print_stats(&stats)
}

/// Prints where a fake's stats and captured requests are served (`main` is its origin); a
/// process that started the fake reads the `stats: ` line.
fn announce_observation(stats_addr: Option<SocketAddr>, main: &str) {
    match stats_addr {
        Some(addr) => {
            eprintln!("stats: http://{addr}/stats (and GET /stats on the main port)");
            eprintln!("captured requests: http://{addr}/requests (see --capture)");
        }
        None => {
            eprintln!("stats: {main}/stats; captured requests: {main}/requests (see --capture)")
        }
    }
}

/// Prints a fake's final stats as pretty JSON on stdout.
fn print_stats(stats: &impl serde::Serialize) -> Result<(), FakeError> {
    let json = serde_json::to_string_pretty(stats)
        .map_err(|e| FakeError::Config(format!("stats serialisation failed: {e}")))?;
    println!("{json}");
    Ok(())
}

fn wait_for_signal() -> Result<(), FakeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await
        }
    })?;
    Ok(())
}

/// Parses "5ms", "250us", "2s", or a range "1ms..20ms".
pub fn parse_latency(text: &str) -> Result<Latency, String> {
    match text.split_once("..") {
        Some((min, max)) => {
            let (min, max) = (parse_duration(min)?, parse_duration(max)?);
            if min > max {
                return Err(format!("latency range {text:?} has min above max"));
            }
            Ok(Latency::Uniform { min, max })
        }
        None => {
            let d = parse_duration(text)?;
            Ok(if d.is_zero() {
                Latency::None
            } else {
                Latency::Fixed(d)
            })
        }
    }
}

/// Parses a duration with a unit: "250us", "5ms", "2s", "5m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration {text:?} needs a unit (us, ms, s, m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with a unit"))?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("duration {text:?} has unknown unit {unit:?}")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    // Named as `volley`'s subcommands are, so that clap derives the same names.
    #[allow(clippy::enum_variant_names)]
    #[derive(Parser)]
    enum Cli {
        FakeApns(FakeApnsArgs),
        FakeFcm(FakeFcmArgs),
        FakeWebpush(FakeWebPushArgs),
    }

    #[test]
    fn latencies_parse() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Result<Latency, ()>)] = &[
            ("5ms", Ok(Latency::Fixed(ms(5)))),
            ("0ms", Ok(Latency::None)),
            ("250us", Ok(Latency::Fixed(Duration::from_micros(250)))),
            ("1s", Ok(Latency::Fixed(ms(1000)))),
            (
                "1ms..20ms",
                Ok(Latency::Uniform {
                    min: ms(1),
                    max: ms(20),
                }),
            ),
            ("20ms..1ms", Err(())),
            ("5", Err(())),
            ("ms", Err(())),
            ("5h", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_latency(text).map_err(|_| ()), *want, "{text}");
        }
    }

    #[test]
    fn arguments_parse_and_help_documents_the_prefixes() {
        Cli::command().debug_assert();
        let Cli::FakeApns(args) = Cli::parse_from([
            "volley",
            "fake-apns",
            "--listen",
            "127.0.0.1:0",
            "--single-stream-until-auth",
            "--goaway-after",
            "10",
            "--latency",
            "1ms..2ms",
            "--topic",
            "com.example",
        ]) else {
            panic!("expected fake-apns");
        };
        assert_eq!(args.common.goaway_after, Some(10));
        assert!(args.common.single_stream_until_auth);
        assert_eq!(args.topic.as_deref(), Some("com.example"));
        let Cli::FakeFcm(args) = Cli::parse_from(["volley", "fake-fcm"]) else {
            panic!("expected fake-fcm");
        };
        assert_eq!(args.listen.port(), 4443);
        assert_eq!(args.access_token_ttl, Duration::from_secs(3600));

        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("fake-fcm")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "badd", "dead", "4030", "4290", "5000", "5020", "5030", "--record",
        ] {
            assert!(help.contains(needle), "help lacks {needle}");
        }

        let Cli::FakeWebpush(args) = Cli::parse_from([
            "volley",
            "fake-webpush",
            "--listen",
            "127.0.0.1:0",
            "--ca-out",
            "ca.pem",
            "--http1-only",
            "--capture",
            "5",
            "--latency",
            "2ms",
            "--stats-listen",
            "127.0.0.1:0",
        ]) else {
            panic!("expected fake-webpush");
        };
        assert!(args.http1_only);
        assert_eq!(args.stats_listen.map(|a| a.port()), Some(0));
        assert_eq!(args.capture, 5);
        assert_eq!(args.ca_out.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(args.latency, Some(Latency::Fixed(Duration::from_millis(2))));
        let help = command
            .find_subcommand_mut("fake-webpush")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "dead",
            "4040",
            "4130",
            "4290",
            "5000",
            "5030",
            "ext",
            "401",
            "403",
            "415",
            "--http1-only",
            "--stats-listen",
            "/subscriptions?prefix=P&count=N",
            "dead_every",
        ] {
            assert!(help.contains(needle), "help lacks {needle}");
        }
    }
}
