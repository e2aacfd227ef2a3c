//! The `volley` binary: parses the command line, loads configuration, starts logging and runs
//! one of Volley's roles or tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use volley::signal::shutdown_signal;
use volley_config::{Config, LogFormat, Role};
use volley_contracts::tls::NodeRole;
use volley_contracts::Links;

/// glibc malloc's arena locking and consolidation took about 12% of all CPU in a broadcast;
/// mimalloc cut the whole process's CPU per notification by about 10% (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Volley: a distributed push-notification engine for APNs and FCM.
#[derive(Debug, Parser)]
#[command(name = "volley", version, about, propagate_version = true)]
struct Cli {
    /// The TOML configuration file; `VOLLEY_*` variables override it (`VOLLEY_FRONT__LISTEN`).
    #[arg(long, short, global = true, env = "VOLLEY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: text or json (overrides `log.format`).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Plain TCP between nodes instead of mutual TLS (`cluster.insecure`): only on a network
    /// nobody else reaches.
    #[arg(long, global = true)]
    insecure_links: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a front: the HTTP API that backend services call.
    Front {
        /// Where the HTTP API listens (overrides `front.listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The controller's address (overrides `front.controller`).
        #[arg(long)]
        controller: Option<String>,
    },
    /// Run the controller: splits jobs into chunks and routes them to agents.
    Controller {
        /// Where the tarpc server listens (overrides `controller.listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where jobs are stored (overrides `controller.data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run an agent: delivers chunks to APNs and FCM with this host's credentials.
    Agent {
        /// Where the agent's tarpc server listens (overrides `agent.listen`).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The controller's address (overrides `agent.controller`).
        #[arg(long)]
        controller: Option<String>,
        /// The address the controller should dial (overrides `agent.advertise`).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Run controller, agent and front in one process from one configuration.
    Standalone,
    /// Run a fake APNs server.
    FakeApns(volley_fake::cli::FakeApnsArgs),
    /// Run a fake FCM server (with its OAuth token endpoint).
    FakeFcm(volley_fake::cli::FakeFcmArgs),
    /// Run a fake Web Push service (browsers' push subscriptions).
    FakeWebpush(volley_fake::cli::FakeWebPushArgs),
    /// Send a notification through a front and follow the job.
    Push(volley::push::PushArgs),
    /// Start a whole cluster in this process against the fakes and broadcast to it.
    Demo(volley::demo::DemoArgs),
    /// Measure throughput, latency and CPU against the fakes and the raw HTTP/2 ceiling.
    Bench(volley::bench::BenchArgs),
    /// Certificates for mutual TLS between nodes: a cluster CA, one certificate per node.
    Certs {
        #[command(subcommand)]
        command: volley::certs::CertsCommand,
    },
    /// Web Push tools: `volley vapid generate` makes an app's VAPID key pair.
    Vapid {
        #[command(subcommand)]
        command: volley::vapid::VapidCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration, secrets redacted.
    Check {
        /// The file to check (defaults to --config).
        file: Option<PathBuf>,
        /// Check only what this role reads (a front's file needs no credential files).
        #[arg(long, value_parser = ["all", "front", "controller", "agent"], default_value = "all")]
        role: String,
    },
}

fn main() -> ExitCode {
    volley::memory::prefer_small_pages();
    let cli = Cli::parse();
    volley_provider::tls::install_crypto_provider();
    match cli.command {
        Command::FakeApns(args) => {
            init_logging(LogFormat::Text, "info", cli.log_format.as_deref());
            return report(volley_fake::cli::run_apns(args).map_err(Into::into));
        }
        Command::FakeFcm(args) => {
            init_logging(LogFormat::Text, "info", cli.log_format.as_deref());
            return report(volley_fake::cli::run_fcm(args).map_err(Into::into));
        }
        Command::FakeWebpush(args) => {
            init_logging(LogFormat::Text, "info", cli.log_format.as_deref());
            return report(volley_fake::cli::run_webpush(args).map_err(Into::into));
        }
        Command::Push(args) => {
            init_logging(LogFormat::Text, "warn", cli.log_format.as_deref());
            return report(runtime().and_then(|rt| rt.block_on(volley::push::run(args))));
        }
        Command::Demo(args) => {
            init_logging(LogFormat::Text, "warn", cli.log_format.as_deref());
            return report(runtime().and_then(|rt| rt.block_on(volley::demo::run(args)).map(drop)));
        }
        Command::Certs { command } => return report(volley::certs::run(command)),
        Command::Vapid { command } => return report(volley::vapid::run(command)),
        Command::Bench(args) => {
            init_logging(LogFormat::Text, "warn", cli.log_format.as_deref());
            return report(volley::bench::run(args));
        }
        _ => {}
    }
    let config_file = match &cli.command {
        Command::Config {
            command: ConfigCommand::Check {
                file: Some(file), ..
            },
        } => Some(file.clone()),
        _ => cli.config.clone(),
    };
    // Each role checks only what it reads: a front needs no agent's credential files.
    let role = match &cli.command {
        Command::Front { .. } => Role::Front,
        Command::Controller { .. } => Role::Controller,
        Command::Agent { .. } => Role::Agent,
        Command::Config {
            command: ConfigCommand::Check { role, .. },
        } => match role.as_str() {
            "front" => Role::Front,
            "controller" => Role::Controller,
            "agent" => Role::Agent,
            _ => Role::All,
        },
        _ => Role::All,
    };
    let mut config = match Config::load(config_file.as_deref()).and_then(|config| {
        config.validate_for(role)?;
        Ok(config)
    }) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("volley: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(
        config.log.format,
        &config.log.level,
        cli.log_format.as_deref(),
    );
    let result = match cli.command {
        Command::Config { .. } => {
            print!("{}", config.to_redacted_toml());
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Front { listen, controller } => {
            if let Some(listen) = listen {
                config.front.listen = listen;
            }
            if let Some(controller) = controller {
                config.front.controller = controller;
            }
            volley::links::for_role(&config.cluster, NodeRole::Front, cli.insecure_links)
                .and_then(|links| runtime().and_then(|rt| rt.block_on(run_front(config, links))))
        }
        Command::Controller { listen, data_dir } => {
            if let Some(listen) = listen {
                config.controller.listen = listen;
            }
            if let Some(data_dir) = data_dir {
                config.controller.data_dir = data_dir;
            }
            volley::links::for_role(&config.cluster, NodeRole::Controller, cli.insecure_links)
                .and_then(|links| {
                    runtime().and_then(|rt| rt.block_on(run_controller(config, links)))
                })
        }
        Command::Agent {
            listen,
            controller,
            advertise,
        } => {
            if let Some(listen) = listen {
                config.agent.listen = listen;
            }
            if let Some(controller) = controller {
                config.agent.controller = controller;
            }
            if advertise.is_some() {
                config.agent.advertise = advertise;
            }
            volley::links::for_role(&config.cluster, NodeRole::Agent, cli.insecure_links)
                .and_then(|links| runtime().and_then(|rt| rt.block_on(run_agent(config, links))))
        }
        Command::Standalone => run_standalone(config),
        Command::FakeApns(_)
        | Command::FakeFcm(_)
        | Command::FakeWebpush(_)
        | Command::Push(_)
        | Command::Demo(_)
        | Command::Certs { .. }
        | Command::Vapid { .. }
        | Command::Bench(_) => {
            unreachable!("handled above")
        }
    };
    report(result)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("volley: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime: on 2 cores it measured faster for HTTP/2 than a multi-thread one.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: LogFormat, level: &str, flag: Option<&str>) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter =
        tracing_subscriber::EnvFilter::new(volley::logging::directives(level, rust_log.as_deref()));
    let json = match flag {
        Some(flag) => flag == "json",
        None => format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A role's listener on `addr`, the value of the configuration key `key` (named when the
/// address cannot be bound), non-blocking.
fn bind(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {key} = {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`bind`], for the runtime the role runs on.
fn listen(addr: std::net::SocketAddr, key: &str) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::from_std(bind(addr, key)?)?)
}

async fn run_front(config: Config, links: Links) -> anyhow::Result<()> {
    volley::links::watch(links.clone());
    volley::memory::return_freed_memory();
    let listener = listen(config.front.listen, "front.listen")?;
    let addrs = volley_contracts::controller_addresses(&config.front.controller);
    let (controller, _) = volley_contracts::connect_first_controller(&addrs, 0, &links)
        .await
        .with_context(|| {
            format!(
                "cannot reach the controller at front.controller = {}",
                config.front.controller
            )
        })?;
    let ops = listen(config.front.ops_listen, "front.ops_listen")?;
    volley_front::run(config, listener, ops, controller, links, shutdown_signal()).await?;
    Ok(())
}

async fn run_controller(config: Config, links: Links) -> anyhow::Result<()> {
    volley::links::watch(links.clone());
    volley::memory::return_freed_memory();
    let listener = listen(config.controller.listen, "controller.listen")?;
    let ops = listen(config.controller.ops_listen, "controller.ops_listen")?;
    volley_controller::run(config, listener, ops, links, shutdown_signal()).await?;
    Ok(())
}

async fn run_agent(config: Config, links: Links) -> anyhow::Result<()> {
    volley::links::watch(links.clone());
    volley::memory::return_freed_memory();
    let listener = listen(config.agent.listen, "agent.listen")?;
    let ops = listen(config.agent.ops_listen, "agent.ops_listen")?;
    volley_agent::run(config, listener, ops, links, shutdown_signal()).await?;
    Ok(())
}

/// Controller, agent and front in one process, each on its own thread and runtime, their
/// links secured by a CA made for this process in memory.
fn run_standalone(mut config: Config) -> anyhow::Result<()> {
    use volley_testkit::role::{spawn_controller, spawn_role};
    let certs = volley_contracts::tls::EphemeralCluster::generate()?;
    let controller_listener = bind(config.controller.listen, "controller.listen")?;
    let controller_addr = controller_listener.local_addr()?;
    config.front.controller = controller_addr.to_string();
    config.agent.controller = controller_addr.to_string();
    let controller_ops = bind(config.controller.ops_listen, "controller.ops_listen")?;
    let controller = spawn_controller(
        config.clone(),
        controller_listener,
        controller_ops,
        certs.links(NodeRole::Controller)?,
    )?;
    let agent = {
        let config = config.clone();
        let links = certs.links(NodeRole::Agent)?;
        spawn_role("agent", move |drain| async move {
            let listener = listen(config.agent.listen, "agent.listen")?;
            let ops = listen(config.agent.ops_listen, "agent.ops_listen")?;
            volley_agent::run(config, listener, ops, links, drain).await?;
            Ok(())
        })?
    };
    let links = certs.links(NodeRole::Front)?;
    let front_result = runtime().and_then(|rt| rt.block_on(run_front(config, links)));
    let agent_result = agent.stop();
    let controller_result = controller.stop();
    front_result.and(agent_result).and(controller_result)
}
