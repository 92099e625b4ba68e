//! `abx-load`: load generators for the origin's benchmarks (scripts/bench-origin.sh). They
//! drive a running origin over HTTP from this machine, as clients would, and print what
//! they measured; they share no code with the origin.

use clap::{Parser, Subcommand};

mod assign;
mod ingest;

#[derive(Parser)]
#[command(
    name = "abx-load",
    version,
    about = "Load generators for the abx origin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends bounded, batched event load to an origin and reports throughput and latency.
    Ingest(ingest::Args),
    /// Sends an open-loop load at a fixed rate to the assignment endpoint and reports latency.
    Assign(assign::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => ingest::run(args).await,
        Command::Assign(args) => assign::run(args).await,
    }
}
