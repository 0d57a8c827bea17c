//! `tandem bench`: throughput and latency through Tandem, against two references measured in
//! the same run — the Postgres commit ceiling and the direct (no orchestrator) baseline.
//!
//! For each workload and each client count C, it runs a closed loop of C clients for a warm-up
//! then a measured window, and reports operations/s, latency to the terminal state
//! (HdrHistogram), errors by kind, write transactions per operation in each database (counted by
//! the processes, `GET /stats`, cross-checked against `pg_stat_database.xact_commit` after a
//! quiet period), CPU per operation and each process's peak RSS. For the 2PC checkout also
//! messages and forced writes per transaction, counted by the processes, beside the formulas,
//! and how long each participant held its locks.
//!
//! - this file: the arguments and the run;
//! - [`workloads`]: one module per workload (`checkout`, `checkout-2pc`, `checkout-choreo`,
//!   `noop`);
//! - [`measure`]: the shared closed loop, latency histograms, HTTP helpers;
//! - [`stats`]: counters, CPU and memory snapshots, the machine and Postgres settings;
//! - [`commit`]: an atomic commit's costs (lock holds, messages, forced writes, formulas);
//! - [`purge`]: `--purge-retention`: the checkout without and with the retention purge;
//! - [`observe`]: `--observability-cost`: each workload with metrics and tracing off, then on;
//! - [`events`]: the choreographed checkout's messages, counted at NATS;
//! - [`ceiling`]: the raw commit ceiling; [`target`]: the stack under test (the launcher);
//! - [`report`]: results and their table;
//! - [`live`]: `tandem commit compare --live`, the saga and the atomic commit protocols on one
//!   stack, side by side (each protocol one of these workloads, each row one level).
//! - [`console`]: `tandem saga bench-console`, the console's reads over 100,000 stored sagas.
//!
//! By default the stack runs as the real binaries, child processes of this one (per-process RSS,
//! per-process runtimes as deployed); `--stack in-process` runs it in this process;
//! `--orchestrator-url` targets a running stack.

pub mod ceiling;
pub mod commit;
pub mod console;
pub mod events;
pub mod live;
pub mod measure;
pub mod observe;
pub mod purge;
pub mod report;
pub mod stats;
pub mod target;
pub mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::launch::{DEFAULT_SERVER, RunningStack};
use ceiling::Ceiling;
use measure::{LoopResult, Window, closed_loop};
use report::{Level, Report};
use target::Target;
use workloads::{Load, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StackMode {
    /// The real binaries (next to `tandem`, or `--bin-dir`) as child processes.
    Processes,
    /// Everything in this process (`tandem up`'s stack).
    InProcess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RequestMode {
    /// One request per saga: `POST /sagas?wait=30` answers once the saga is terminal.
    PostWait,
    /// `POST /sagas`, then `GET /sagas/{id}?wait=30` (long poll).
    PostThenPoll,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Target a running stack instead of starting one.
    #[command(flatten)]
    pub running: RunningStack,
    /// The Postgres server (own stack's databases, the ceiling's scratch database, pg_stat).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SERVER)]
    pub database_url: String,
    /// Database name prefix of the bench's own stack (dropped and recreated at start).
    #[arg(long, default_value = "tandem_bench")]
    pub db_prefix: String,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured seconds per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Quiet seconds before reading pg_stat_database (backends flush their counters at most
    /// every 10 s when idle). 0 skips the cross-check.
    #[arg(long, default_value_t = 11.0)]
    pub quiet: f64,
    /// Workloads to run, in order (`--workloads checkout-2pc` runs only the 2PC checkout).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "checkout,checkout-2pc,noop"
    )]
    pub workloads: Vec<Workload>,
    /// Skip the raw INSERT commit ceiling.
    #[arg(long)]
    pub no_ceiling: bool,
    /// Skip the direct baseline (services called in sequence, no orchestrator).
    #[arg(long)]
    pub no_direct: bool,
    #[arg(long, value_enum, default_value = "processes")]
    pub stack: StackMode,
    /// Where the orchestrator / inventory / payment / shipping binaries are (default: next to
    /// this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "post-wait")]
    pub request: RequestMode,
    /// Paxos Commit acceptors to start beside the stack (2F+1; 0: none; `--stack processes`
    /// only). `tandem commit compare --live` sets it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=7))]
    pub acceptors: u8,
    /// Database pool of the bench's own orchestrator.
    #[arg(long, default_value_t = 20)]
    pub orchestrator_pool: u32,
    /// Database pool of each of the bench's own services.
    #[arg(long, default_value_t = 5)]
    pub service_pool: u32,
    /// SKUs the checkout spreads its orders over (each seeded with ample stock).
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// NATS with JetStream, for the choreographed workload (`--workloads checkout-choreo`).
    #[arg(long, env = "NATS_URL", default_value = crate::launch::DEFAULT_NATS)]
    pub nats_url: String,
    /// Hot SKUs: when above 0, every client orders one of the first N SKUs only (contention on
    /// a few stock rows) instead of spreading its orders over `--skus`.
    #[arg(long, default_value_t = 0)]
    pub hot_skus: usize,
    /// Print the results as JSON (the progress line still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep TLS on the database connections. By default the bench's own stack and the ceiling
    /// connect with `sslmode=disable` (loopback: encryption would only add CPU on both ends);
    /// an explicit `sslmode` in `--database-url` is kept either way.
    #[arg(long)]
    pub db_tls: bool,
    /// After the workloads, run the checkout at each client count twice: without the retention
    /// purge, then with finished sagas purged this many seconds after they settle (forget calls
    /// to the services, then deletes): throughput and p99 side by side.
    #[arg(long)]
    pub purge_retention: Option<f64>,
}

/// `tandem bench`'s arguments: [`BenchArgs`] (which other commands build too) and the
/// switches only this command has.
#[derive(Debug, Args)]
pub struct BenchCommand {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Instead of the usual report: what metrics and tracing cost. For each of `--workloads`
    /// and `--clients`, a fresh stack with both off (`TANDEM_METRICS=off`,
    /// `OTEL_SDK_DISABLED=true`) and one with both on (spans exported over OTLP to a sink this
    /// process serves), in the same run: throughput and p50/p99 side by side.
    #[arg(long)]
    pub observability_cost: bool,
}

impl BenchArgs {
    fn window(&self) -> Window {
        Window {
            warmup: self.warmup,
            duration: self.duration,
        }
    }
}

async fn sleep_secs(s: f64) {
    if s > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(s)).await;
    }
}

/// A short load of every workload, then `ANALYZE` in every database of the stack. On a fresh
/// database the first prepared statements are planned for empty tables (sequential scans) and
/// keep those plans until autovacuum analyzes the tables, up to a minute later: measured runs
/// would then pay scans that grow with the tables. ANALYZE invalidates those plans.
pub async fn prime(
    t: &Target,
    args: &BenchArgs,
    loads: &[(Workload, Box<dyn Load>)],
) -> anyhow::Result<()> {
    let window = Window {
        warmup: 0.0,
        duration: 2.0,
    };
    for (w, load) in loads {
        let op = load.orchestrated(t, args.request);
        closed_loop(&format!("priming {}", w.label()), 16, window, op).await;
    }
    let s = stats::snapshot(t, &args.database_url).await?;
    for c in s.by_component.values().filter(|c| !c.database.is_empty()) {
        let url = tandem_kit::db::database_url(&args.database_url, &c.database);
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
    }
    Ok(())
}

/// The ceiling for `clients`, measured once per client count.
pub struct Ceilings(pub BTreeMap<usize, Ceiling>);

impl Ceilings {
    async fn get(&mut self, args: &BenchArgs, clients: usize) -> anyhow::Result<Option<Ceiling>> {
        if args.no_ceiling {
            return Ok(None);
        }
        if let Some(c) = self.0.get(&clients) {
            return Ok(Some(c.clone()));
        }
        let c = ceiling::measure(args, clients).await?;
        self.0.insert(clients, c.clone());
        Ok(Some(c))
    }
}

/// One workload at one client count: orchestrated, then the ceiling and the direct baseline.
pub async fn level(
    t: &Target,
    args: &BenchArgs,
    (workload, load): &(Workload, Box<dyn Load>),
    clients: usize,
    ceilings: &mut Ceilings,
) -> anyhow::Result<Level> {
    let s0 = stats::snapshot(t, &args.database_url).await?;
    let x0 = stats::xact_commits(&args.database_url).await?;
    let label = format!("{} C={clients}", workload.label());
    let nats = t.nats.as_ref().filter(|_| load.choreographed());
    let e0 = match nats {
        Some(js) => Some(events::read(js).await?),
        None => None,
    };
    let op = load.orchestrated(t, args.request);
    let orchestrated = closed_loop(&label, clients, args.window(), op).await;
    let s1 = stats::snapshot(t, &args.database_url).await?;
    // after the loop the last checkouts' events are still being consumed: wait until the
    // consumers have caught up before counting
    let events = match (nats, e0) {
        (Some(js), Some(e0)) => {
            let e1 = events::settled(js).await?;
            Some(events::costs(e0, e1, orchestrated.total_ops.max(1) as f64))
        }
        _ => None,
    };
    let x1 = if args.quiet > 0.0 {
        sleep_secs(args.quiet).await;
        Some(stats::xact_commits(&args.database_url).await?)
    } else {
        None
    };
    let n = orchestrated.total_ops.max(1) as f64;
    let transactions = s0.transactions(&s1, &x0, x1.as_ref(), n);
    let commit = load.commit_participants().map(|participants| {
        commit::costs(
            participants,
            &transactions,
            "orchestrator",
            &orchestrated.reported,
        )
    });
    let ceiling = ceilings.get(args, clients).await?;
    let direct = match load.direct(t).filter(|_| !args.no_direct) {
        Some(op) => {
            let r = closed_loop(&format!("{label} direct"), clients, args.window(), op).await;
            sleep_secs(args.quiet).await;
            Some(r)
        }
        None => None,
    };
    let (critical_paths, critical_paths_disturbed) = s0.critical_paths(&s1);
    Ok(compare(Level {
        workload: *workload,
        clients,
        exchanges_per_op: s0.exchanges_per_op(&s1, n),
        critical_paths,
        critical_paths_disturbed,
        forced_writes_per_saga: transactions
            .values()
            .map(|t| t.forced_writes_per_saga)
            .sum(),
        transactions,
        commit,
        events,
        client_cpu_ms_per_saga: s0.client_cpu_ms(&s1, n),
        orchestrated,
        ceiling,
        direct,
        ceiling_ratio: None,
        throughput_vs_direct: None,
        latency_vs_direct_p50: None,
    }))
}

/// Fill in the ratios of a level's figures.
fn compare(mut l: Level) -> Level {
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let o: &LoopResult = &l.orchestrated;
    l.ceiling_ratio = l
        .ceiling
        .as_ref()
        .and_then(|x| ratio(o.per_sec, x.commits_per_sec));
    l.throughput_vs_direct = l.direct.as_ref().and_then(|d| ratio(o.per_sec, d.per_sec));
    l.latency_vs_direct_p50 = l
        .direct
        .as_ref()
        .and_then(|d| ratio(o.latency.p50_ms, d.latency.p50_ms));
    l
}

fn stack_text(args: &BenchArgs) -> String {
    match (&args.running.orchestrator_url, args.stack) {
        (Some(u), _) => format!("running stack at {u}"),
        (None, StackMode::Processes) => "child processes (release binaries)".into(),
        (None, StackMode::InProcess) => "in-process".into(),
    }
}

/// `url` with `sslmode=disable` unless it names an `sslmode` (loopback: encryption would only
/// add CPU on both ends).
pub fn without_tls(url: &str) -> String {
    if url.contains("sslmode=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

pub async fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    let BenchCommand {
        bench: mut args,
        observability_cost,
    } = cmd;
    if !args.db_tls {
        args.database_url = without_tls(&args.database_url);
    }
    let postgres = stats::postgres_settings(&args.database_url).await?;
    let machine = stats::machine();
    if observability_cost {
        return observe::report(&args, machine, postgres).await;
    }
    eprintln!("starting the stack …");
    let t = target::start(&args).await?;
    target::wait_healthy(&t).await?;
    let loads: Vec<(Workload, Box<dyn Load>)> =
        args.workloads.iter().map(|w| (*w, w.load(&args))).collect();
    for (_, load) in &loads {
        load.prepare(&t).await?;
    }
    prime(&t, &args, &loads).await?;
    sleep_secs(args.quiet).await;
    let mut ceilings = Ceilings(BTreeMap::new());
    let mut levels = Vec::new();
    for load in &loads {
        for &c in &args.clients {
            levels.push(level(&t, &args, load, c, &mut ceilings).await?);
        }
    }
    let purge = match args.purge_retention {
        Some(secs) => purge::compare(&t, &args, secs).await?,
        None => vec![],
    };
    let last = stats::snapshot(&t, &args.database_url).await?;
    let own = (
        "tandem bench (clients)".to_string(),
        tandem_kit::stats::rss_kib().1,
    );
    let peak_rss_kib = last
        .by_component
        .iter()
        .map(|(c, x)| (c.clone(), x.peak_rss_kib))
        .chain(std::iter::once(own))
        .collect();
    let report = Report {
        machine,
        postgres,
        stack: stack_text(&args),
        request_mode: format!("{:?}", args.request),
        warmup_secs: args.warmup,
        duration_secs: args.duration,
        levels,
        purge,
        peak_rss_kib,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print(&report);
    }
    if let Some(s) = t.in_process {
        s.stop().await?;
    }
    Ok(())
}
