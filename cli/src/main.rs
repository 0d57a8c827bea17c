//! `tandem`: the user's command line. Each command group lives in its own module; add a
//! variant to [`Commands`] and a match arm in `main` to extend it.

use clap::{Parser, Subcommand};

mod commit;
mod kv;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Tandem: transactions that span microservices"
)]
struct Cli {
    /// Bearer token sent on every call to a running stack (see docs/security.md; an operator
    /// token can do everything the commands do). `tandem up` prints the one it generated.
    #[arg(long, global = true, env = tandem_cli::client::TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start the whole checkout stack (orchestrator, inventory, payment, shipping, and with NATS
    /// the choreographed checkout's orders entry point) in one process, with fault injection on
    /// (`/faults` on each service).
    Up(tandem_cli::commands::UpArgs),
    /// Run the checkout demo scenarios and print each saga's timeline.
    Demo(tandem_cli::commands::DemoArgs),
    /// Atomic commit protocols (2PC, 3PC, Paxos Commit).
    Commit(commit::CommitArgs),
    /// Benchmark sagas/s and latency against the Postgres commit ceiling and direct calls.
    Bench(tandem_cli::bench::BenchCommand),
    /// The transactional key-value store: up, get, put, del, tx, bench.
    Kv(kv::KvArgs),
    /// The choreographed checkout (NATS JetStream, no orchestrator): show ORDER's timeline,
    /// run the demo.
    Choreo(tandem_cli::choreo::ChoreoArgs),
    /// Operators' console: list, show, cancel, retry (now) or resume sagas of a running
    /// orchestrator.
    Saga(tandem_cli::saga::SagaArgs),
    /// Postgres set-up: `provision` makes each component's database, owner role (migrations)
    /// and runtime role (least privilege, docs/security.md).
    Db(tandem_cli::db::DbArgs),
}

fn main() -> anyhow::Result<()> {
    if std::env::var("RUST_LOG").is_ok() {
        tandem_kit::http::init_tracing();
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let cli = Cli::parse();
    if let Some(t) = cli.token {
        tandem_cli::client::set_token(t);
    }
    match cli.command {
        Commands::Up(a) => runtime()?.block_on(tandem_cli::commands::up(a)),
        Commands::Demo(a) => runtime()?.block_on(tandem_cli::commands::demo(a)),
        Commands::Commit(a) => runtime()?.block_on(commit::run(a)),
        Commands::Bench(a) => runtime()?.block_on(tandem_cli::bench::bench(a)),
        Commands::Kv(a) => runtime()?.block_on(kv::run(a)),
        Commands::Choreo(a) => runtime()?.block_on(tandem_cli::choreo::run(a)),
        Commands::Saga(a) => runtime()?.block_on(tandem_cli::saga::run(a)),
        Commands::Db(a) => runtime()?.block_on(tandem_cli::db::run(a)),
    }
}
