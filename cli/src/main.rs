use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tandem",
    about = "Tandem: transactions that span microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start the whole checkout stack (orchestrator, inventory, payment, shipping) in one process.
    Up(tandem_cli::commands::UpArgs),
    /// Run the checkout demo scenarios and print each saga's timeline.
    Demo(tandem_cli::commands::DemoArgs),
    /// Benchmark sagas/s and latency against the Postgres commit ceiling and direct calls.
    Bench(tandem_cli::bench::BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var("RUST_LOG").is_ok() {
        tandem_kit::http::init_tracing();
    }
    match Cli::parse().command {
        Commands::Up(a) => tandem_cli::commands::up(a).await,
        Commands::Demo(a) => tandem_cli::commands::demo(a).await,
        Commands::Bench(a) => tandem_cli::bench::bench(a).await,
    }
}
