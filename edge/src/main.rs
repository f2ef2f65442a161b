//! `tributary-edge`: the gateway daemon. `run` ingests into local streams and serves
//! them; `check-config` validates a configuration; `status` reports a running edge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tributary::node::config::{load, NodeConfig, Overrides};
use tributary_edge::config::{self, EdgeConfig};
use tributary_edge::fleet;

/// Tributary edge node.
#[derive(Debug, Parser)]
#[command(name = "tributary-edge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the edge until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Checks a configuration file, or every gateway of a fleet file: prints
    /// `FILE: ok`, or one line per problem. The certificate files of `[tls]` and
    /// `[cloud]` must be there, readable, the key the certificate's, and valid now; one
    /// expiring within 30 days is warned of.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// Check the file only, not the certificate and key files it names (for a
        /// configuration checked away from the machine it is for).
        #[arg(long)]
        without_files: bool,
    },
    /// Prints one gateway's effective configuration from a fleet file (its
    /// `[defaults]` merged with its `[gateway.ID]` section).
    RenderConfig {
        /// The fleet file.
        #[arg(long, value_name = "FILE")]
        fleet: PathBuf,
        /// The gateway's id.
        #[arg(long, value_name = "ID")]
        gateway: String,
    },
    /// Shows a running edge's streams and sources.
    Status(StatusArgs),
    /// With the edge stopped: if its log will not open because a frame is damaged,
    /// says what cutting the log there drops; with --yes, cuts it.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
struct RepairArgs {
    /// The edge's settings, as `run` takes them.
    #[command(flatten)]
    run: RunArgs,
    /// Cut the log (drops what the report lists).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Data directory [default: from the file, else $XDG_DATA_HOME/tributary/edge].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// QUIC address of the segment service [default: 127.0.0.1:9290].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// HTTP address of /health, /metrics and /status [default: 127.0.0.1:9291].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The edge's configuration file, to find its HTTP address.
    #[arg(long, value_name = "FILE", conflicts_with = "http")]
    config: Option<PathBuf>,
    /// The edge's HTTP address [default: 127.0.0.1:9291].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Print the status document as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig {
            file,
            without_files,
        } => return check_config(&file, !without_files),
        Command::RenderConfig { fleet, gateway } => render_config(&fleet, &gateway),
        Command::Status(args) => status(args),
        Command::Repair(args) => repair(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tributary-edge: error: {}",
                tributary::node::error_line(e.chain())
            );
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path, with_files: bool) -> ExitCode {
    let checked = load(file, |text, base| {
        if fleet::is_fleet(text) {
            // A fleet's certificates are on its gateways, not here.
            fleet::check(text, base)
                .map(|gateways| (format!("{} gateways", gateways.len()), Vec::new()))
        } else {
            config::parse(text, base).map(|cfg| {
                let mut ids: Vec<_> = cfg
                    .node
                    .tls
                    .iter()
                    .map(|t| ("[tls]", t.identity(), true))
                    .collect();
                ids.extend(
                    cfg.cloud
                        .iter()
                        .map(|c| ("[cloud]", c.identity.clone(), false)),
                );
                ("ok".to_string(), ids)
            })
        }
    });
    match checked {
        // The certificate files: there, readable, matching, valid now.
        Ok((_, ids)) if with_files && !tributary::node::config::report_identities(file, &ids) => {
            ExitCode::FAILURE
        }
        Ok((what, _)) => {
            println!("{}: {what}", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn render_config(file: &Path, gateway: &str) -> anyhow::Result<()> {
    let fleet = load(file, |text, _| fleet::Fleet::parse(text))?;
    print!("{}", fleet.render(gateway).map_err(anyhow::Error::msg)?);
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, node) = edge_config(&args)?;
    tributary::node::init_logging();
    // SIGHUP reads the file again, with the same flags (the node's grants, revoked
    // certificates and TLS identity; see `Node::reload`).
    let reload = move || edge_config(&args).map(|(_, node)| node);
    runtime()?.block_on(tributary_edge::run::run(cfg, node, reload))
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let (_, node) = edge_config(&args.run)?;
    tributary::node::init_logging();
    let cuts = tributary::node::repair_log(&node, None, args.yes)?;
    match tributary::node::repair_report(&cuts, args.yes) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(text) => anyhow::bail!("{text}"),
    }
}

/// The edge's configuration and its node part with the flags applied.
fn edge_config(args: &RunArgs) -> anyhow::Result<(EdgeConfig, NodeConfig)> {
    let cfg: EdgeConfig = load(&args.config, config::parse)?;
    let node = NodeConfig::new(
        cfg.node.clone(),
        Overrides {
            data_dir: args.data_dir.clone(),
            quic_listen: args.listen,
            http_listen: args.http,
        },
        config::defaults(),
    );
    Ok((cfg, node))
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let addr = match (args.http, &args.config) {
        (Some(a), _) => a,
        (None, Some(file)) => {
            let cfg: EdgeConfig = load(file, config::parse)?;
            cfg.node.http_listen.unwrap_or(config::DEFAULT_HTTP_LISTEN)
        }
        (None, None) => config::DEFAULT_HTTP_LISTEN,
    };
    let s = runtime()?.block_on(tributary_edge::status::fetch(addr))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", tributary_edge::status::render_table(&s));
    }
    Ok(())
}
