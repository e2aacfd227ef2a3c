//! `volley bench`: measures Volley against the fakes and, in the same run, the raw HTTP/2
//! ceiling of the machine.
//!
//! Each run starts a fresh system (a cluster in this process, the real binary as processes,
//! or those processes each on a host of its own), measures the ceiling first (the APNs client
//! straight to a fake APNs), then the chosen workload, and reports rates, each part's CPU per
//! notification (on hosts, each host's too), peak RSS and whether the counts balance.
//! `--runs N` repeats and reports medians.
//!
//! - [`procfs`]: CPU and memory from `/proc`.
//! - [`system`]: starting and observing the system under test in each topology.
//! - [`workload`]: broadcast, ingest, ceiling; [`load`]: the ingest load generator's client.
//! - [`report`]: results, medians, the table and the JSON; [`plot`]: the SVG.

pub mod load;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod scratch;
pub mod system;
pub mod webpush;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use report::{BenchJson, RunResult};
use system::System;
use workload::{BroadcastOptions, IngestOptions};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// N tokens in one (or a few) API requests, followed to the last delivery.
    Broadcast,
    /// Many concurrent single-notification requests to the front.
    Ingest,
    /// Only the APNs client straight to a fake APNs.
    Ceiling,
}

/// How the system under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Topology {
    /// Every role on its own thread of this process.
    Standalone,
    /// Every role (and each fake) a process of the `volley` binary.
    Processes,
    /// Every role a process of the `volley` binary on a host of its own: Linux network
    /// namespaces on a bridge (1 controller host, 1 front host, an agent host per agent, the
    /// fakes on a providers' host). Needs root. No Web Push, no PostgreSQL yet.
    Hosts,
}

/// Options of `volley bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum, default_value = "broadcast")]
    pub workload: Workload,
    /// Where the roles run.
    #[arg(long, value_enum, default_value = "standalone")]
    pub topology: Topology,
    /// Agents to start.
    #[arg(long, default_value_t = 1)]
    pub agents: usize,
    /// Broadcast: tokens in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub tokens: u64,
    /// Share of APNs tokens (the rest are FCM), for broadcast and ingest.
    #[arg(long, default_value_t = 1.0)]
    pub apns_share: f64,
    /// Broadcast: share of the tokens that are Web Push subscriptions of the fake push
    /// service (the rest are split by --apns-share). The ceiling is then Volley's Web Push
    /// client straight to the fake push service (blended with the APNs ceiling by share).
    #[arg(long, default_value_t = 0.0)]
    pub webpush_share: f64,
    /// Broadcast: API requests the tokens are split into, sent at once.
    #[arg(long, default_value_t = 1)]
    pub broadcast_requests: usize,
    /// Broadcast: one token in this many is a dead token the fakes reject (0 = none).
    #[arg(long, default_value_t = 0)]
    pub invalid_every: usize,
    /// Ingest: concurrent connections, one request at a time each.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Ingest: how long to send ("10s", "500ms").
    #[arg(long, default_value = "10s", value_parser = volley_fake::cli::parse_duration)]
    pub duration: Duration,
    /// Ingest: stop after this many requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Ceiling: notifications sent (after a short warm-up).
    #[arg(long, default_value_t = 300_000)]
    pub ceiling_tokens: u64,
    /// Ceiling: HTTP/2 connections of the client.
    #[arg(long, default_value_t = 4)]
    pub ceiling_connections: usize,
    /// Ceiling: requests in flight at once, over all connections.
    #[arg(long, default_value_t = 400)]
    pub ceiling_in_flight: usize,
    /// Skip the ceiling (broadcast and ingest measure it by default).
    #[arg(long)]
    pub no_ceiling: bool,
    /// Repeat the whole measurement this many times and report medians.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Write every figure of every run here, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw delivered/s over time and each part's CPU here (SVG), from the last run.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The `volley` binary for `--topology processes` and `hosts` (default: this executable).
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Plain TCP between the roles instead of mutual TLS, to measure what TLS costs.
    #[arg(long)]
    pub insecure_links: bool,
    /// Keep the controller's state in PostgreSQL (`controller.store = "postgres"`) on the
    /// server at this URL, in a scratch database created for each run and dropped after it
    /// (the URL's user needs CREATEDB). Without it, the embedded store.
    #[arg(long, value_name = "URL")]
    pub postgres_url: Option<String>,
    /// An experiment, not a configuration to run: the controller's store commits without
    /// fsync (`controller.fsync = false`), to measure what durability costs. Standalone only.
    #[arg(long)]
    pub no_fsync: bool,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Broadcast => "broadcast",
            Workload::Ingest => "ingest",
            Workload::Ceiling => "ceiling",
        }
    }
}

impl Topology {
    fn name(self) -> &'static str {
        match self {
            Topology::Standalone => "standalone",
            Topology::Processes => "processes",
            Topology::Hosts => "hosts",
        }
    }
}

/// Runs the bench; the driver gets a thread of its own (`volley-bench`) so that its CPU is
/// told apart from the roles'.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("volley-bench".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run_all(args))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the bench thread panicked"))?
}

async fn run_all(args: BenchArgs) -> anyhow::Result<()> {
    volley_provider::tls::install_crypto_provider();
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("finding the volley binary")?,
    };
    eprintln!(
        "volley bench {} --topology {}: {} run(s) on {} CPUs (load {:.2})",
        args.workload.name(),
        args.topology.name(),
        args.runs.max(1),
        procfs::cpus(),
        procfs::load_average()
    );
    if args.topology == Topology::Hosts {
        check_hosts(&args)?;
    }
    let mut runs = Vec::new();
    for run in 1..=args.runs.max(1) {
        let result = run_once(&args, &binary, run).await?;
        report::print_run(&result);
        runs.push(result);
    }
    let summary = report::summarise(&runs);
    report::print_summary(&summary, args.workload.name(), args.topology.name());
    if let Some(path) = &args.json {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        report::write_json(
            path,
            &BenchJson {
                workload: args.workload.name(),
                topology: args.topology.name(),
                command,
                cpus: procfs::cpus(),
                runs: &runs,
                summary: &summary,
            },
        )
        .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let (Some(path), Some(last)) = (&args.plot, runs.last()) {
        plot::draw(path, last).with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("drew {}", path.display());
    }
    if !summary.balanced {
        anyhow::bail!("the counts did not balance in every run");
    }
    Ok(())
}

/// Fails early, before any ceiling is measured, when `--topology hosts` cannot run: options it
/// does not support, or no right to make network namespaces (tried with one throwaway host).
fn check_hosts(args: &BenchArgs) -> anyhow::Result<()> {
    if args.insecure_links {
        anyhow::bail!("--insecure-links is not supported with --topology hosts");
    }
    if args.postgres_url.is_some() {
        anyhow::bail!("--postgres-url is not supported with --topology hosts yet");
    }
    if args.webpush_share > 0.0 && args.workload == Workload::Broadcast {
        anyhow::bail!(
            "--webpush-share is not supported with --topology hosts: the providers' host runs \
             no fake push service"
        );
    }
    volley_testkit::hosts::Hosts::create(&["probe"]).context(system::HOSTS_NEED)?;
    Ok(())
}

async fn run_once(
    args: &BenchArgs,
    binary: &std::path::Path,
    run: usize,
) -> anyhow::Result<RunResult> {
    let load_before = procfs::load_average();
    let ceiling = if args.workload == Workload::Ceiling || !args.no_ceiling {
        let (tokens, connections, in_flight, quiet) = (
            args.ceiling_tokens,
            args.ceiling_connections,
            args.ceiling_in_flight,
            args.quiet,
        );
        let share = if args.workload == Workload::Broadcast {
            args.webpush_share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let apns = if share < 1.0 {
            Some(
                tokio::task::spawn_blocking(move || {
                    workload::ceiling(tokens, connections, in_flight, quiet)
                })
                .await??,
            )
        } else {
            None
        };
        // A message costs one ECDH on each side: a tenth of the APNs ceiling's tokens
        // measures it as well, in a tenth of the time.
        let web = if share > 0.0 {
            let messages = (tokens / 10).max(1000);
            Some(
                tokio::task::spawn_blocking(move || {
                    webpush::ceiling(messages, connections, in_flight, quiet)
                })
                .await??,
            )
        } else {
            None
        };
        match (apns, web) {
            (Some(apns), Some(web)) => Some(webpush::blend(&apns, &web, share)),
            (apns, web) => apns.or(web),
        }
    } else {
        None
    };
    let mut result = RunResult {
        run,
        load_before,
        ceiling,
        broadcast: None,
        ingest: None,
        engine_rate: None,
        ratio: None,
        cpu_ratio: None,
        notifications: 0,
        usage: Vec::new(),
        system_cpu_us_per_notification: None,
        cpu_timeline: Vec::new(),
        other_load_cores: None,
        hosts: Vec::new(),
    };
    if args.workload == Workload::Ceiling {
        if let Some(ceiling) = &result.ceiling {
            result.engine_rate = Some(ceiling.rate);
            result.notifications = ceiling.delivered;
            result.usage = ceiling.usage.clone();
            result.system_cpu_us_per_notification = Some(ceiling.cpu_us_per_notification);
        }
        return Ok(result);
    }

    let scratch = match &args.postgres_url {
        Some(server) => Some(scratch::Database::create(server).await?),
        None => None,
    };
    let postgres_url = scratch.as_ref().map(|database| database.url.clone());
    let system = match args.topology {
        Topology::Standalone => {
            System::standalone(
                args.agents,
                args.insecure_links,
                postgres_url,
                args.no_fsync,
            )
            .await?
        }
        Topology::Processes | Topology::Hosts if args.no_fsync => {
            anyhow::bail!("--no-fsync is for --topology standalone")
        }
        Topology::Processes => {
            System::processes(binary, args.agents, args.insecure_links, postgres_url).await?
        }
        Topology::Hosts => System::hosts(binary, args.agents).await?,
    };
    let measured = async {
        match args.workload {
            Workload::Broadcast => {
                let (broadcast, cpu) = workload::broadcast(
                    &system,
                    &BroadcastOptions {
                        tokens: args.tokens,
                        apns_share: args.apns_share,
                        webpush_share: args.webpush_share,
                        requests: args.broadcast_requests,
                        invalid_every: args.invalid_every,
                        poll: match args.topology {
                            Topology::Standalone => Duration::from_millis(20),
                            Topology::Processes | Topology::Hosts => Duration::from_millis(50),
                        },
                        quiet: args.quiet,
                    },
                )
                .await?;
                let delta = cpu.delta(&system);
                result.other_load_cores = Some(cpu.other_load(&delta));
                result.hosts = workload::host_usage(
                    &delta,
                    &system.hosts_of_processes(),
                    broadcast.fake_delivered,
                    cpu.elapsed(),
                );
                result.notifications = broadcast.fake_delivered;
                result.engine_rate = Some(broadcast.rate);
                (result.usage, result.system_cpu_us_per_notification) =
                    workload::usage(&delta, &system.peak_rss(), broadcast.fake_delivered);
                result.cpu_timeline = cpu.samples;
                result.broadcast = Some(broadcast);
            }
            Workload::Ingest => {
                let (ingest, cpu) = workload::ingest(
                    &system,
                    &IngestOptions {
                        connections: args.connections,
                        duration: args.duration,
                        requests: args.requests,
                        apns_share: args.apns_share,
                        quiet: args.quiet,
                    },
                )
                .await?;
                let delta = cpu.delta(&system);
                result.other_load_cores = Some(cpu.other_load(&delta));
                result.hosts = workload::host_usage(
                    &delta,
                    &system.hosts_of_processes(),
                    ingest.fake_delivered,
                    cpu.elapsed(),
                );
                result.notifications = ingest.fake_delivered;
                result.engine_rate = Some(ingest.rate);
                (result.usage, result.system_cpu_us_per_notification) =
                    workload::usage(&delta, &system.peak_rss(), ingest.fake_delivered);
                result.cpu_timeline = cpu.samples;
                result.ingest = Some(ingest);
            }
            Workload::Ceiling => {}
        }
        anyhow::Ok(())
    }
    .await;
    let stopped = tokio::task::spawn_blocking(move || system.shutdown()).await?;
    if let Some(scratch) = scratch {
        scratch.drop_database().await?;
    }
    measured?;
    stopped?;
    if let (Some(broadcast), Some(ceiling)) = (&result.broadcast, &result.ceiling) {
        result.ratio = Some(broadcast.rate / ceiling.rate.max(1e-9));
        result.cpu_ratio = result
            .system_cpu_us_per_notification
            .map(|engine| ceiling.cpu_us_per_notification / engine.max(1e-9));
    }
    Ok(result)
}
