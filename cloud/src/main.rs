//! `tributary-cloud`: the cloud node. Today: `standalone` (one node serving segments
//! over QUIC, moving data to Tier-2, with health and metrics over HTTP), `check-config`
//! and `certs`.

use tributary_cloud::{certs, config, standalone};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tributary::node::config::{load, NodeConfig, Overrides};

/// Tributary cloud node.
#[derive(Debug, Parser)]
#[command(name = "tributary-cloud", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a single node until SIGTERM or SIGINT. Without a `[tls]` section in the configuration it
    /// makes a development PKI and writes a client profile into the data directory.
    Standalone(StandaloneArgs),
    /// Checks a configuration file: prints `FILE: ok`, or one line per problem. The
    /// certificate files of `[tls]` must be there, readable, the key the certificate's,
    /// and valid now; one expiring within 30 days is warned of.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// Check the file only, not the certificate and key files it names (for a
        /// configuration checked away from the machine it is for).
        #[arg(long)]
        without_files: bool,
    },
    /// Makes a CA (or reuses DIR/ca.pem + DIR/ca.key), a server certificate and client
    /// certificates, as PEM files in DIR.
    Certs(CertsArgs),
    /// Shows a running node's streams, Tier-2 backlog and each edge's replication lag.
    Status(StatusArgs),
    /// With the node stopped: if its log will not open because a frame is damaged,
    /// says what cutting the log there drops; with --yes, cuts it.
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
struct RepairArgs {
    /// The node's settings, as `standalone` takes them.
    #[command(flatten)]
    node: StandaloneArgs,
    /// Cut the log (drops what the report lists).
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The node's configuration file, to find its HTTP address.
    #[arg(long, value_name = "FILE", conflicts_with = "http")]
    config: Option<PathBuf>,
    /// The node's HTTP address [default: 127.0.0.1:9191].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Print the status document as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StandaloneArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory [default: $TRIBUTARY_DATA_DIR, else
    /// $XDG_DATA_HOME/tributary/standalone, else ~/.local/share/tributary/standalone].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// QUIC address of the segment service [default: 127.0.0.1:9190].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// HTTP address of /health and /metrics [default: 127.0.0.1:9191].
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Output directory (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// DNS names and IP addresses of the server certificate (leave out to issue or
    /// renew client certificates only).
    #[arg(long = "server-name", value_name = "NAME", num_args = 1..)]
    server_names: Vec<String>,
    /// A client certificate with this common name, written to DIR/NAME.pem and
    /// DIR/NAME.key; issuing one again renews it (new key and serial, same identity).
    #[arg(long = "client", value_name = "NAME", num_args = 1..)]
    clients: Vec<String>,
    /// Days each certificate is valid.
    #[arg(long, default_value_t = tributary::tls::DEFAULT_VALID_DAYS)]
    days: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Standalone(args) => standalone(args),
        Command::CheckConfig {
            file,
            without_files,
        } => return check_config(&file, !without_files),
        Command::Status(args) => status(args),
        Command::Repair(args) => repair(args),
        Command::Certs(args) => certs::run(&args.out, &args.server_names, &args.clients, args.days)
            .map(|lines| {
                for l in lines {
                    println!("{l}");
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "tributary-cloud: error: {}",
                tributary::node::error_line(e.chain())
            );
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path, with_files: bool) -> ExitCode {
    match load(file, config::parse) {
        Ok(settings) => {
            // The [tls] files: there, readable, matching, valid now.
            let ids: Vec<_> = settings
                .node
                .tls
                .iter()
                .map(|t| ("[tls]", t.identity(), true))
                .collect();
            if with_files && !tributary::node::config::report_identities(file, &ids) {
                return ExitCode::FAILURE;
            }
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let addr = match (args.http, &args.config) {
        (Some(a), _) => a,
        (None, Some(file)) => load(file, config::parse)?
            .node
            .http_listen
            .unwrap_or(standalone::DEFAULT_HTTP_LISTEN),
        (None, None) => standalone::DEFAULT_HTTP_LISTEN,
    };
    let s = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(tributary_cloud::status::fetch(addr))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", tributary_cloud::status::render_table(&s));
    }
    Ok(())
}

fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    let (cfg, tier2) = standalone_config(&args)?;
    tributary::node::init_logging();
    // SIGHUP reads the file again, with the same flags (see `Node::reload`).
    let reload = move || standalone_config(&args).map(|(cfg, _)| cfg);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(standalone::run(cfg, tier2, reload))
}

fn repair(args: RepairArgs) -> anyhow::Result<()> {
    let (cfg, tier2) = standalone_config(&args.node)?;
    tributary::node::init_logging();
    let cuts = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let tiering = standalone::tiering(&cfg, &tier2).await?;
            let backend = tiering.map(|t| t.backend);
            anyhow::Ok(tributary::node::repair_log(&cfg, backend, args.yes)?)
        })?;
    match tributary::node::repair_report(&cuts, args.yes) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(text) => anyhow::bail!("{text}"),
    }
}

/// The node's configuration: the file (if any), then the flags.
fn standalone_config(args: &StandaloneArgs) -> anyhow::Result<(NodeConfig, config::Tier2Settings)> {
    let file = match &args.config {
        Some(path) => load(path, config::parse)?,
        None => config::CloudSettings::default(),
    };
    let cfg = NodeConfig::new(
        file.node,
        Overrides {
            data_dir: args.data_dir.clone(),
            quic_listen: args.listen,
            http_listen: args.http,
        },
        standalone::defaults(),
    );
    Ok((cfg, file.tier2))
}
