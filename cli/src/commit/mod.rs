//! `tandem commit ...`: the atomic commit protocols.
//!
//! - here: `compare`, the protocol cores' costs on an in-memory network, and `compare --live`,
//!   the checkout under each protocol over the real services
//!   ([`tandem_cli::bench::live`]);
//! - [`demo`]: `demo 2pc-blocking`, 2PC's blocking case live on the real stack; `demo paxos`
//!   `demo 3pc-unblocks` and `demo 3pc-partition` run `tandem_cli::paxos_demo` /
//!   `tandem_cli::three_pc_demo` / `tandem_cli::three_pc_partition_demo`;
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
    /// Compare the protocols. By default: 2PC, 3PC and Paxos Commit failure-free on an
    /// in-memory network, the measured messages, message delays and forced writes beside their
    /// formulas. With --live: the checkout as an orchestrated saga, as 2PC and as Paxos Commit
    /// against the real services (the real binaries, 3 acceptors) in one run, on two workloads
    /// (distinct SKUs; a few hot SKUs shared by every client) at each client count: messages
    /// per transaction counted by every process beside the formula, forced writes, p50/p99
    /// latency, throughput, lock hold, abort rate; then the fault scenarios of the scripted
    /// demos (2PC coordinator crash, Paxos leader crash) and what happened.
    Compare {
        /// Number of participants (N; in-memory only: live runs the checkout's 3 services).
        #[arg(long, short = 'n', default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
        participants: u8,
        /// Failures Paxos Commit tolerates (F): 2F+1 acceptors (in-memory only: live runs 3).
        #[arg(long, short = 'f', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=10))]
        failures: u8,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Run over the real services instead of the in-memory network.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        live_args: LiveArgs,
    },
    /// Scripted demos of the protocols over the real services (each checks what it observes
    /// and exits non-zero otherwise).
    Demo {
        #[command(subcommand)]
        demo: DemoCommand,
    },
    /// Decide a transaction whose coordinator never comes back: a recorded, loud heuristic
    /// decision (see docs/commit-protocols.md) that the orchestrator then delivers.
    Resolve(resolve::ResolveArgs),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// 2PC's blocking case: the coordinator crashes after three YES votes, prepared services
    /// hold their locks, a saga on the same SKU waits; both endings (abort without a Commit
    /// record, commit with one). Starts the real binaries.
    #[command(name = "2pc-blocking")]
    TwoPcBlocking(demo::DemoArgs),
    /// Paxos Commit: the leader crashes after the votes (another orchestrator finishes), one
    /// acceptor down as well (it still commits), two of three down (it waits, then finishes).
    /// Starts the real binaries (two orchestrators, three services, three acceptors).
    Paxos(PaxosDemoArgs),
    /// 3PC unblocks 2PC's case: the coordinator crashes after PreCommit — 3PC's participants
    /// time out, run the termination protocol and commit without it — beside 2PC's coordinator
    /// crashing after the votes (its participants stay blocked until it returns); with times.
    /// Starts the real binaries (three services, two orchestrators). Databases
    /// `tandem_demo_3pc_*`.
    #[command(name = "3pc-unblocks")]
    ThreePcUnblocks(PaxosDemoArgs),
    /// A partition splits plain 3PC: {orchestrator, inventory} | {payment, shipping} from
    /// PreCommit on — the coordinator's side commits, the other side's termination protocol
    /// aborts — and an invariant scan over the three services' read endpoints finds and prints
    /// the split. Then the same partition under quorum 3PC (`3pc-quorum`, quorums 2 and 2 of
    /// 3): payment and shipping abort, inventory blocks holding its prepared transaction until
    /// the partition heals, then aborts too; no split. Starts the real binaries (three
    /// services, one orchestrator). Databases `tandem_demo_3pc_split_*`.
    #[command(name = "3pc-partition")]
    ThreePcPartition(PaxosDemoArgs),
}

#[derive(Args)]
struct PaxosDemoArgs {
    /// Postgres server (any database URL on it); the demo makes its own databases
    /// `tandem_demo_paxos_*` and drops them when it passes.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    server_url: String,
    /// Where the binaries are (default: beside this executable).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
}

/// The options of `compare --live` (ignored without it).
#[derive(Args)]
struct LiveArgs {
    /// Concurrent clients, one row per value (live).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per row (live).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Warm-up seconds per row, not measured (live).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// SKUs the distinct workload spreads its orders over (live).
    #[arg(long, default_value_t = 200)]
    skus: usize,
    /// SKUs shared by every client in the hot workload; 0 leaves the hot workload out (live).
    #[arg(long, default_value_t = 4)]
    hot_skus: usize,
    /// Protocols to run, in table order (live; default: all — saga, saga-choreo, 2pc, 3pc,
    /// 3pc-quorum, paxos-commit).
    #[arg(long, value_delimiter = ',')]
    protocols: Vec<String>,
    /// Leave out the fault scenarios (live; each runs its scripted demo, tens of seconds).
    #[arg(long)]
    no_faults: bool,
    /// The Postgres server (live; needs `max_prepared_transactions` > 0).
    #[arg(long, env = "DATABASE_URL", default_value = tandem_cli::launch::DEFAULT_SERVER)]
    database_url: String,
    /// Database name prefix of the live run's own stack (dropped and recreated at start).
    #[arg(long, default_value = "tandem_compare")]
    db_prefix: String,
    /// Where the binaries are (live; default: beside this executable).
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
    /// NATS with JetStream, for the choreographed saga (live).
    #[arg(long, env = "NATS_URL", default_value = tandem_cli::launch::DEFAULT_NATS)]
    nats_url: String,
}

async fn compare_live(a: LiveArgs, json: bool) -> anyhow::Result<()> {
    use tandem_cli::bench::live;
    let opts = live::LiveOptions {
        database_url: a.database_url,
        db_prefix: a.db_prefix,
        bin_dir: a.bin_dir,
        clients: a.clients,
        warmup: a.warmup,
        duration: a.duration,
        skus: a.skus.max(1),
        hot_skus: a.hot_skus,
        protocols: a.protocols,
        nats_url: a.nats_url,
    };
    let mut report = live::run(opts.clone()).await?;
    if !a.no_faults {
        let protocols = live::select(&opts.protocols)?;
        report.faults = live::run_faults(&std::env::current_exe()?, &opts, &protocols).await;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        live::print(&report);
    }
    for name in live::databases(&opts)? {
        tandem_kit::db::drop_database(&opts.database_url, &name).await?;
    }
    anyhow::ensure!(
        report.faults.iter().all(|f| f.passed),
        "a fault scenario's demo failed its checks"
    );
    Ok(())
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
        CommitCommand::Demo {
            demo: DemoCommand::TwoPcBlocking(a),
        } => demo::run(a).await,
        CommitCommand::Demo {
            demo: DemoCommand::Paxos(a),
        } => paxos_demo(a).await,
        CommitCommand::Demo {
            demo: DemoCommand::ThreePcUnblocks(a),
        } => three_pc_demo(a).await,
        CommitCommand::Demo {
            demo: DemoCommand::ThreePcPartition(a),
        } => three_pc_partition_demo(a).await,
        CommitCommand::Resolve(a) => resolve::run(a).await,
        CommitCommand::Compare {
            live: true,
            live_args,
            json,
            ..
        } => compare_live(live_args, json).await,
        CommitCommand::Compare {
            participants,
            failures,
            json,
            ..
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
        " \
         a delay is one network hop on the path until the last participant learns the outcome."
    );
}

/// A scripted demo's options on databases `<prefix>_*` (dropped first), and a function that
/// drops them again.
async fn demo_options(
    a: PaxosDemoArgs,
    prefix: &str,
    databases: fn(&tandem_cli::launch::Layout) -> Vec<String>,
) -> anyhow::Result<(
    tandem_cli::paxos_demo::Options,
    impl AsyncFn() -> anyhow::Result<()>,
)> {
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow::anyhow!("the executable has no directory"))?
            .to_path_buf(),
    };
    let layout = tandem_cli::launch::Layout::new(&a.server_url, prefix);
    let names = databases(&layout);
    let server = layout.server_url.clone();
    let drop_all = async move || {
        for name in &names {
            tandem_kit::db::drop_database(&server, name).await?;
        }
        anyhow::Ok(())
    };
    drop_all().await?;
    let opts = tandem_cli::paxos_demo::Options {
        layout,
        bin_dir,
        log_dir: None,
        verbose: true,
    };
    Ok((opts, drop_all))
}

async fn three_pc_demo(a: PaxosDemoArgs) -> anyhow::Result<()> {
    use tandem_cli::three_pc_demo::{databases, run};
    let (opts, drop_all) = demo_options(a, "tandem_demo_3pc", databases).await?;
    let r = run(opts).await?;
    println!(
        "coordinator crashed: 3PC committed in {:.1} s (term {}); 2PC blocked {:.1} s until its \
         coordinator returned, then finished in {:.1} s",
        r.three_pc_secs, r.three_pc_term, r.two_pc_blocked_secs, r.two_pc_after_restart_secs
    );
    drop_all().await
}

async fn three_pc_partition_demo(a: PaxosDemoArgs) -> anyhow::Result<()> {
    use tandem_cli::three_pc_partition_demo::{databases, run};
    let (opts, drop_all) = demo_options(a, "tandem_demo_3pc_split", databases).await?;
    let r = run(opts).await?;
    let branches: Vec<String> = r
        .branches
        .iter()
        .map(|(s, t)| format!("{s} (term {t})"))
        .collect();
    println!(
        "partition: inventory, payment, shipping {}; the coordinator says {}; {} messages \
         dropped; decided in {:.1} s; the scan found: {}",
        branches.join(", "),
        r.coordinator_state,
        r.dropped,
        r.decided_secs,
        r.violations.join("; ")
    );
    let q = &r.quorum;
    println!(
        "quorum 3PC, same partition: payment and shipping aborted in {:.1} s; inventory blocked \
         {} with its transaction prepared ({:.1} s old), the coordinator {}; after the heal \
         inventory {} in {:.1} s, the coordinator says {}; the scans found {} violation(s)",
        q.other_side_secs,
        q.during.first().map_or("?", |(s, _)| s.as_str()),
        q.blocked_age_secs,
        q.coordinator_blocked,
        q.after.first().map_or("?", |(s, _)| s.as_str()),
        q.heal_to_decided_secs,
        q.coordinator_after,
        q.violations.len()
    );
    drop_all().await
}

async fn paxos_demo(a: PaxosDemoArgs) -> anyhow::Result<()> {
    use tandem_cli::paxos_demo::{databases, run};
    let (opts, drop_all) = demo_options(a, "tandem_demo_paxos", databases).await?;
    let report = run(opts).await?;
    println!(
        "takeovers finished under epochs {:?} in {:?} s; {} ballots while a majority was down",
        report.takeover_epochs,
        report
            .takeover_secs
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        report.rounds_while_blocked
    );
    drop_all().await
}
