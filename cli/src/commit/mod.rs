//! `tandem commit ...`: the atomic commit protocols.
//!
//! - here: `compare`, the protocol cores' costs on an in-memory network;
//! - [`demo`]: `demo 2pc-blocking`, 2PC's blocking case live on the real stack;
//! - [`resolve`]: `resolve ID --commit|--abort`, an operator's heuristic decision.

mod demo;
mod resolve;

use clap::{Args, Subcommand};
use serde::Serialize;
use tandem_protocols::sim::{self, Row};

#[derive(Args)]
pub struct CommitArgs {
    #[command(subcommand)]
    command: CommitCommand,
}

#[derive(Subcommand)]
enum CommitCommand {
    /// Run 2PC, 3PC and Paxos Commit failure-free on an in-memory network and compare the
    /// measured messages, message delays and forced writes with their formulas.
    Compare {
        /// Number of participants (N).
        #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
        participants: u8,
        /// Failures Paxos Commit tolerates (F): 2F+1 acceptors.
        #[arg(long, short = 'f', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=10))]
        failures: u8,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a demo on the real stack (its own processes and databases); exits non-zero when
    /// it observes anything other than what it explains.
    Demo(demo::DemoArgs),
    /// Decide a transaction whose coordinator never comes back: a recorded, loud heuristic
    /// decision (see docs/commit-protocols.md) that the orchestrator then delivers.
    Resolve(resolve::ResolveArgs),
}

#[derive(Serialize)]
struct Report {
    participants: u8,
    failures: u8,
    all_match: bool,
    rows: Vec<Row>,
}

pub async fn run(args: CommitArgs) -> anyhow::Result<()> {
    match args.command {
        CommitCommand::Demo(a) => demo::run(a).await,
        CommitCommand::Resolve(a) => resolve::run(a).await,
        CommitCommand::Compare {
            participants,
            failures,
            json,
        } => {
            let rows = sim::compare(participants, failures);
            let report = Report {
                participants,
                failures,
                all_match: rows.iter().all(Row::matches),
                rows,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_table(&report);
            }
            anyhow::ensure!(
                report.all_match,
                "a measured figure differs from its formula"
            );
            Ok(())
        }
    }
}

fn print_table(r: &Report) {
    println!(
        "Failure-free commit, N = {} participants, Paxos Commit F = {} ({} acceptors)",
        r.participants,
        r.failures,
        2 * r.failures as u32 + 1
    );
    println!("measured on the in-memory network; formula in brackets\n");
    println!(
        "{:<44} {:>22} {:>10} {:>18} {:>10}",
        "protocol", "messages", "delays", "forced writes", "matches"
    );
    for row in &r.rows {
        let m = &row.measured;
        let e = &row.expected;
        println!(
            "{:<44} {:>22} {:>10} {:>18} {:>10}",
            row.protocol,
            format!("{} [{}={}]", m.messages, e.messages_formula, e.messages),
            format!("{} [{}]", m.delays, e.delays),
            format!(
                "{} [{}={}]",
                m.forced_writes, e.forced_writes_formula, e.forced_writes
            ),
            if row.matches() { "yes" } else { "NO" }
        );
    }
    println!();
    for row in &r.rows {
        let extra = row.measured.messages_total - row.measured.messages;
        if extra > 0 {
            println!(
                "{}: {} more message(s) after the decision (acknowledgements that let the coordinator forget)",
                row.protocol, extra
            );
        }
    }
    println!("topology: every node on its own host; P0 initiates and its first message counts;");
    println!(
        "          a delay is one network hop on the path until the last participant learns the outcome."
    );
}
