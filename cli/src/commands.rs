//! `tandem up` and `tandem demo`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::client::Client;
use crate::demo;
use crate::launch::stack::{Stack, StackConfig};
use crate::launch::{DEFAULT_NATS, Layout, RunningStack};

/// Where a stack started by `up` or `demo` keeps its data: SQLite files in a data directory
/// unless a Postgres URL is given (never auto-detected).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// A Postgres server (any database URL on it; the stack creates its own databases
    /// `<prefix>_*`). Not given: the embedded store (SQLite files in --data-dir).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// With --database-url: database name prefix (`<prefix>_orchestrator`, …).
    #[arg(long)]
    pub db_prefix: Option<String>,
    /// Without --database-url: the directory of the SQLite files (one per component).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

impl StoreArgs {
    /// The layout: Postgres databases `<prefix>_*` (default `prefix`) when a URL is given,
    /// else SQLite files in `--data-dir` (default `.tandem/<name>`).
    pub fn layout(&self, name: &str, prefix: &str) -> anyhow::Result<Layout> {
        match &self.database_url {
            Some(url) => {
                anyhow::ensure!(
                    self.data_dir.is_none(),
                    "--data-dir is for the embedded store: drop it, or drop --database-url"
                );
                anyhow::ensure!(
                    !tandem_kit::sqlite::is_sqlite(url),
                    "--database-url is a Postgres server; for SQLite give --data-dir instead"
                );
                let prefix = self.db_prefix.as_deref().unwrap_or(prefix);
                Ok(Layout::new(url, prefix))
            }
            None => {
                anyhow::ensure!(
                    self.db_prefix.is_none(),
                    "--db-prefix names Postgres databases: give --database-url too"
                );
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| std::path::Path::new(".tandem").join(name));
                Layout::sqlite(&dir)
                    .with_context(|| format!("the data directory {}", dir.display()))
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Orchestrator port; inventory, payment and shipping take the next three, orders +7.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// NATS with JetStream for the choreographed checkout (orders on port +7, the services'
    /// relays and consumers). Empty: without it. Unreachable: `up` says so and starts without.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS)]
    pub nats_url: String,
    /// Bearer tokens every server of the stack accepts (see docs/security.md). Unset (and no
    /// --open): `up` generates one token per role and writes them to --tokens-out.
    #[command(flatten)]
    pub auth: tandem_kit::auth::AuthConfig,
    /// Without TANDEM_TOKENS / TANDEM_TOKENS_FILE: run open (no tokens; loopback only)
    /// instead of generating tokens.
    #[arg(long)]
    pub open: bool,
    /// Where the generated tokens go (a TANDEM_TOKENS_FILE, mode 0600, removed when `up`
    /// stops). Default: `<temp dir>/tandem-<db prefix>/tokens`.
    #[arg(long)]
    pub tokens_out: Option<std::path::PathBuf>,
}

/// Where `tandem up` writes the tokens it generated, unless told.
pub fn default_tokens_path(db_prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("tandem-{db_prefix}"))
        .join("tokens")
}

/// The NATS URL the stack's choreographed checkout uses, or None (and why, printed): none
/// given, the embedded store (the outbox needs Postgres), or NATS unreachable.
async fn choreography(layout: &Layout, nats_url: &str) -> Option<String> {
    if nats_url.is_empty() {
        return None;
    }
    if layout.data_dir.is_some() {
        println!(
            "Without the choreographed checkout: its transactional outbox needs Postgres \
             (give --database-url postgres://…)\n"
        );
        return None;
    }
    match crate::choreo::connect(nats_url).await {
        Ok(_) => Some(nats_url.to_string()),
        Err(e) => {
            println!("Without the choreographed checkout: {e}\n");
            None
        }
    }
}

/// Start the whole stack in this process (fault injection on) and serve until Ctrl-C.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let layout = args.store.layout("data", "tandem")?;
    let db_prefix = layout.db_prefix.clone();
    let mut cfg = StackConfig::new(layout.clone(), args.port);
    let user_tokens = args.auth.tokens.is_some() || args.auth.tokens_file.is_some();
    if user_tokens || args.open {
        cfg = cfg.with_auth(args.auth.clone());
    }
    let tokens_path = match &cfg.tokens {
        Some(t) => {
            let path = args
                .tokens_out
                .clone()
                .unwrap_or_else(|| default_tokens_path(&db_prefix));
            t.write_file(&path)
                .with_context(|| format!("writing the tokens to {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    cfg.nats_url = choreography(&layout, &args.nats_url).await;
    let mut stack = Stack::start(cfg).await?;
    println!("Tandem is up (fault injection on: POST /faults on each service):");
    match (&stack.tokens, &tokens_path) {
        (Some(t), Some(path)) => {
            println!(
                "bearer tokens required: generated for this run (client, operator, service) in {}",
                path.display()
            );
            println!(
                "  export TANDEM_TOKEN={}   # the operator token",
                t.operator
            );
            println!(
                "  then `tandem saga list`, or curl -H \"Authorization: Bearer $TANDEM_TOKEN\" {}/sagas",
                stack.orchestrator_url
            );
        }
        _ if user_tokens => println!(
            "bearer tokens required (TANDEM_TOKENS / TANDEM_TOKENS_FILE); `tandem` commands send \
             --token or $TANDEM_TOKEN"
        ),
        _ => println!("OPEN (--open): anyone on this machine may call every route"),
    }
    println!("  orchestrator  {}", stack.orchestrator_url);
    println!("  inventory     {}", stack.inventory_url);
    println!("  payment       {}", stack.payment_url);
    println!("  shipping      {}", stack.shipping_url);
    let mut components = crate::launch::COMPONENTS.to_vec();
    if let Some(orders) = &stack.orders_url {
        println!(
            "  orders        {orders}  (choreographed checkout, NATS {})",
            args.nats_url
        );
        components.push(crate::launch::ORDERS);
    }
    let dbs: Vec<String> = components.iter().map(|c| layout.database_url(c)).collect();
    println!("store: {}", layout.describe());
    println!("databases: {}", dbs.join(", "));
    println!("Ctrl-C stops it (gracefully: leases are handed back).");
    let failed = tokio::select! {
        e = stack.wait_for_failure() => Some(e),
        _ = tandem_kit::http::shutdown_signal() => None,
    };
    // The tokens die with the stack.
    if let Some(path) = &tokens_path {
        let _ = std::fs::remove_file(path);
    }
    match failed {
        Some(e) => Err(e),
        None => stack.stop().await,
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run against a stack that is already up (e.g. `tandem up`, with fault injection on).
    #[command(flatten)]
    pub running: RunningStack,
    /// Without --orchestrator-url: where the demo's own stack keeps its data.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Run the checkout scenarios, print their timelines; Err if any outcome is unexpected.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let (client, stack) = match args.running.urls()? {
        Some([o, inv, pay, ship]) => (Client::new(&o, &inv, &pay, &ship), None),
        None => {
            let layout = args.store.layout("demo", "tandem_demo")?;
            println!(
                "Starting the stack in this process ({}) …",
                layout.describe()
            );
            let stack = Stack::start(StackConfig::new(layout, 0)).await?;
            (Client::for_stack(&stack), Some(stack))
        }
    };
    let health = client
        .get(&format!("{}/healthz", client.orchestrator))
        .await?;
    anyhow::ensure!(
        health.status == 200,
        "the orchestrator is not healthy: {}",
        health.body
    );
    let run_id = format!("demo-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    println!(
        "Running {} checkout scenarios (run {run_id}) …",
        demo::SCENARIOS.len()
    );
    let outcomes =
        tokio::time::timeout(Duration::from_secs(300), demo::run_all(&client, &run_id)).await??;
    let ok = demo::report(&outcomes);
    if let Some(s) = stack {
        s.stop().await?;
    }
    anyhow::ensure!(ok, "some scenarios did not end as expected");
    Ok(())
}
