//! `tandem`: the user's command line. Each command group lives in its own module; add a
//! variant to [`Commands`] and a match arm in `main` to extend it.

use clap::{Parser, Subcommand};

mod commit;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: transactions that span microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Atomic commit protocols (2PC, 3PC, Paxos Commit).
    Commit(commit::CommitArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Commit(args) => commit::run(args),
    }
}
