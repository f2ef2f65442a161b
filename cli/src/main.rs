//! `trib`: the Tributary command-line tool.

mod admin;
mod bench_log;
mod bench_write;
mod connect;
mod rw;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Tributary command-line tool.
#[derive(Debug, Parser)]
#[command(name = "trib", version, about)]
struct Cli {
    /// Client profile (server address, certificates). Default: $TRIB_PROFILE, else the
    /// profile a standalone node on this machine writes under its data directory.
    #[arg(long, global = true)]
    profile: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scopes: create, list, delete.
    Scope {
        #[command(subcommand)]
        what: admin::ScopeCmd,
    },
    /// Streams: create, list, describe, scale, seal, truncate, delete.
    Stream {
        #[command(subcommand)]
        what: admin::StreamCmd,
    },
    /// Writes one event per line of standard input (or one per --file) to SCOPE/STREAM.
    Write(rw::WriteArgs),
    /// Reads events of SCOPE/STREAM to standard output (or, with --out, to files).
    Read(rw::ReadArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Append throughput, ack latency and write amplification of the segment log,
    /// compared with raw sequential writes + fdatasync on the same disk.
    Log(bench_log::Args),
    /// Writes through a running server (writers over QUIC), compared with `bench log`
    /// on this machine in the same run.
    Write(bench_write::Args),
}

fn main() {
    let cli = Cli::parse();
    let profile = cli.profile;
    let r = match cli.command {
        Command::Bench {
            what: Bench::Log(args),
        } => bench_log::run(&args),
        other => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(run(other, profile)),
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
        },
    };
    if let Err(e) = r {
        eprintln!("trib: {}", tributary::node::error_line(e.chain()));
        std::process::exit(1);
    }
}

async fn run(command: Command, profile: Option<PathBuf>) -> anyhow::Result<()> {
    let client = connect::connect(profile.as_deref()).await?;
    let r = match command {
        Command::Scope { what } => admin::scope(&client, what).await,
        Command::Stream { what } => admin::stream(&client, what).await,
        Command::Write(args) => rw::write(&client, args).await,
        Command::Read(args) => rw::read(&client, args).await,
        Command::Bench {
            what: Bench::Write(args),
        } => bench_write::run(&client, args).await,
        Command::Bench {
            what: Bench::Log(_),
        } => Ok(()),
    };
    client.close().await;
    r
}
