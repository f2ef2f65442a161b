//! `trib`: the Tributary command-line tool.

mod bench_log;

use clap::{Parser, Subcommand};

/// Tributary command-line tool.
#[derive(Debug, Parser)]
#[command(name = "trib", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench {
            what: Bench::Log(args),
        } => bench_log::run(&args),
    }
}
