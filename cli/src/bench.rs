//! `tandem bench`: throughput and latency of orchestrated sagas, against two references measured
//! in the same run — the Postgres commit ceiling and the direct (no orchestrator) baseline.
//!
//! For each workload (`checkout`: three steps on the real services; `noop`: two steps on the
//! services' `POST /noop`, DTM's "empty branches") and each client count C, it runs a closed
//! loop of C clients for a warm-up then a measured window, and reports sagas/s, latency from the
//! POST to the terminal state (HdrHistogram), errors by kind, write transactions per saga in each
//! database (counted by the processes, `GET /stats`, cross-checked against
//! `pg_stat_database.xact_commit` after a quiet period), and each process's peak RSS.
//!
//! By default the stack runs as the real binaries, child processes of this one (per-process RSS,
//! per-process runtimes as deployed); `--stack in-process` uses [`crate::stack::Stack`];
//! `--orchestrator-url` targets a running stack.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::client::checkout_input;
use crate::stack::{Stack, StackConfig};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const COMPONENTS: [&str; 4] = ["orchestrator", "inventory", "payment", "shipping"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The shipped checkout definition: reserve stock, charge, ship (real SQL + barrier).
    Checkout,
    /// Two steps calling `POST /noop` on inventory and payment (no database work).
    Noop,
}

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
    /// Target a running stack (services on the next three ports unless given).
    #[arg(long)]
    pub orchestrator_url: Option<String>,
    #[arg(long)]
    pub inventory_url: Option<String>,
    #[arg(long)]
    pub payment_url: Option<String>,
    #[arg(long)]
    pub shipping_url: Option<String>,
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
    #[arg(long, value_delimiter = ',', default_value = "checkout,noop")]
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
    /// Database pool of the bench's own orchestrator.
    #[arg(long, default_value_t = 20)]
    pub orchestrator_pool: u32,
    /// Database pool of each of the bench's own services.
    #[arg(long, default_value_t = 5)]
    pub service_pool: u32,
    /// SKUs the checkout spreads its orders over (each seeded with ample stock).
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Print the results as JSON (the progress line still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep TLS on the database connections. By default the bench's own stack and the ceiling
    /// connect with `sslmode=disable` (loopback: encryption would only add CPU on both ends);
    /// an explicit `sslmode` in `--database-url` is kept either way.
    #[arg(long)]
    pub db_tls: bool,
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopResult {
    pub clients: usize,
    pub measured_secs: f64,
    /// Completed successfully inside the measured window.
    pub completed: u64,
    pub per_sec: f64,
    pub latency: Latency,
    pub errors: BTreeMap<String, u64>,
    /// Operations started in the whole run (warm-up included), for per-saga ratios.
    pub total_ops: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DbTransactions {
    pub database: String,
    /// CPU ms per saga of the component's process (in-process stack: the whole process).
    pub process_cpu_ms_per_saga: Option<f64>,
    /// CPU ms per saga of the Postgres backends serving this database.
    pub postgres_cpu_ms_per_saga: f64,
    /// Write transactions per saga, counted by the process (a batch counts 1/k per saga).
    pub writes_per_saga: f64,
    pub reads_per_saga: f64,
    /// `pg_stat_database.xact_commit` delta per saga (all committed transactions, reads too).
    pub pg_xact_commit_per_saga: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub connections: usize,
    pub commits_per_sec: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub workload: Workload,
    pub clients: usize,
    pub orchestrated: LoopResult,
    pub transactions: BTreeMap<String, DbTransactions>,
    /// CPU ms per saga of the benchmark's own clients.
    pub client_cpu_ms_per_saga: Option<f64>,
    pub ceiling: Option<Ceiling>,
    /// sagas/s ÷ ceiling commits/s.
    pub ceiling_ratio: Option<f64>,
    pub direct: Option<LoopResult>,
    /// orchestrated sagas/s ÷ direct sequences/s.
    pub throughput_vs_direct: Option<f64>,
    /// orchestrated p50 ÷ direct p50.
    pub latency_vs_direct_p50: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Value,
    pub postgres: Value,
    pub stack: String,
    pub request_mode: String,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub levels: Vec<Level>,
    /// Peak RSS (VmHWM) per process, KiB, at the end of the run.
    pub peak_rss_kib: BTreeMap<String, Option<u64>>,
}

// ---------------------------------------------------------------- the stack under test

struct Target {
    http: reqwest::Client,
    urls: BTreeMap<&'static str, String>,
    _children: Vec<tokio::process::Child>,
    in_process: Option<Stack>,
}

impl Target {
    fn url(&self, c: &str) -> &str {
        &self.urls[c]
    }
}

fn db_url(server: &str, name: &str) -> String {
    tandem_kit::testing::with_database(server, name)
}

async fn admin(server: &str) -> anyhow::Result<sqlx::PgConnection> {
    PgConnectOptions::from_str(server)?
        .database("postgres")
        .connect()
        .await
        .context("connecting to the Postgres server")
}

async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin(server).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn next_port(url: &str, offset: u16) -> anyhow::Result<String> {
    let (head, port) = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{url} has no port"))?;
    let port: u16 = port.parse()?;
    Ok(format!("{head}:{}", port + offset))
}

async fn start_target(args: &BenchArgs) -> anyhow::Result<Target> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut urls = BTreeMap::new();
    if let Some(o) = &args.orchestrator_url {
        let o = o.trim_end_matches('/').to_string();
        let get = |v: &Option<String>, off| v.clone().map_or_else(|| next_port(&o, off), Ok);
        urls.insert("inventory", get(&args.inventory_url, 1)?);
        urls.insert("payment", get(&args.payment_url, 2)?);
        urls.insert("shipping", get(&args.shipping_url, 3)?);
        urls.insert("orchestrator", o);
        return Ok(Target {
            http,
            urls,
            _children: vec![],
            in_process: None,
        });
    }
    for c in COMPONENTS {
        drop_database(&args.database_url, &format!("{}_{c}", args.db_prefix)).await?;
    }
    match args.stack {
        StackMode::InProcess => {
            let mut cfg = StackConfig::new(&args.database_url, &args.db_prefix, 0);
            cfg.service_pool_size = args.service_pool;
            let pool = args.orchestrator_pool;
            cfg.orchestrator = Box::new(move |c| c.db_pool_size = pool);
            let s = Stack::start(cfg).await?;
            urls.insert("orchestrator", s.orchestrator_url.clone());
            urls.insert("inventory", s.inventory_url.clone());
            urls.insert("payment", s.payment_url.clone());
            urls.insert("shipping", s.shipping_url.clone());
            Ok(Target {
                http,
                urls,
                _children: vec![],
                in_process: Some(s),
            })
        }
        StackMode::Processes => {
            let dir = match &args.bin_dir {
                Some(d) => d.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("the executable's directory")?
                    .to_path_buf(),
            };
            for c in COMPONENTS {
                urls.insert(c, format!("http://127.0.0.1:{}", free_port()?));
            }
            let mut children = Vec::new();
            for c in COMPONENTS {
                let bin = dir.join(c);
                anyhow::ensure!(
                    bin.exists(),
                    "{} not found: build the workspace first (cargo build --release --workspace) or pass --bin-dir",
                    bin.display()
                );
                let mut cmd = tokio::process::Command::new(&bin);
                let listen = urls[c].trim_start_matches("http://").to_string();
                cmd.env_remove("RUST_LOG")
                    .env(
                        "DATABASE_URL",
                        db_url(&args.database_url, &format!("{}_{c}", args.db_prefix)),
                    )
                    .env("LISTEN_ADDR", listen)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .kill_on_drop(true);
                if c == "orchestrator" {
                    cmd.env("DB_POOL_SIZE", args.orchestrator_pool.to_string())
                        .env("INVENTORY_URL", &urls["inventory"])
                        .env("PAYMENT_URL", &urls["payment"])
                        .env("SHIPPING_URL", &urls["shipping"])
                        .env("INSTANCE_ID", "bench");
                } else {
                    cmd.env("DB_POOL_SIZE", args.service_pool.to_string())
                        .env("FAULT_INJECTION", "off");
                }
                children.push(
                    cmd.spawn()
                        .with_context(|| format!("starting {}", bin.display()))?,
                );
            }
            Ok(Target {
                http,
                urls,
                _children: children,
                in_process: None,
            })
        }
    }
}

async fn wait_healthy(t: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in COMPONENTS {
        loop {
            let ok = t
                .http
                .get(format!("{}/healthz", t.url(c)))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{c} did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

const NOOP_DEFINITION: &str = r#"{
  "name": "bench_noop",
  "description": "Benchmark: two steps with no effect (POST /noop on inventory and payment), like DTM's empty branches.",
  "steps": [
    { "name": "first",
      "action": { "service": "inventory", "method": "POST", "path": "/noop" },
      "compensation": { "service": "inventory", "method": "POST", "path": "/noop" } },
    { "name": "second",
      "action": { "service": "payment", "method": "POST", "path": "/noop" },
      "compensation": { "service": "payment", "method": "POST", "path": "/noop" } }
  ]
}"#;

async fn prepare(t: &Target, args: &BenchArgs) -> anyhow::Result<()> {
    if args.workloads.contains(&Workload::Noop) {
        let def: Value = serde_json::from_str(NOOP_DEFINITION)?;
        let r = t
            .http
            .post(format!("{}/definitions", t.url("orchestrator")))
            .json(&def)
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "registering the no-op definition: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    if args.workloads.contains(&Workload::Checkout) {
        let inv = t.url("inventory").to_string();
        futures::future::try_join_all((0..args.skus).map(|i| {
            let http = t.http.clone();
            let url = format!("{inv}/stock/{}", sku(i));
            async move {
                let r = http
                    .put(url)
                    .json(&json!({ "available": 1_000_000_000_000i64 }))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "seeding stock: {}", r.status());
                Ok(())
            }
        }))
        .await?;
    }
    Ok(())
}

/// A short load of every workload, then `ANALYZE` in every database of the stack. On a fresh
/// database the first prepared statements are planned for empty tables (sequential scans) and
/// keep those plans until autovacuum analyzes the tables, up to a minute later: measured runs
/// would then pay scans that grow with the tables. ANALYZE invalidates those plans.
async fn prime(t: &Target, args: &BenchArgs) -> anyhow::Result<()> {
    for &w in &args.workloads {
        closed_loop(
            &format!("priming {w:?}").to_lowercase(),
            16,
            0.0,
            2.0,
            orchestrated_op(t, w, args.skus, args.request),
        )
        .await;
    }
    let s = snapshot(t, &args.database_url).await?;
    for c in s.by_component.values() {
        if c.database.is_empty() {
            continue;
        }
        let mut conn = PgConnectOptions::from_str(&db_url(&args.database_url, &c.database))?
            .connect()
            .await?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
    }
    Ok(())
}

fn sku(i: usize) -> String {
    format!("bench-sku-{i:05}")
}

// ---------------------------------------------------------------- stats snapshots

#[derive(Debug, Clone, Default)]
struct Counted {
    database: String,
    writes: u64,
    reads: u64,
    peak_rss_kib: Option<u64>,
    cpu_ms: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    by_component: BTreeMap<String, Counted>,
    /// CPU ms of each Postgres backend (pid) serving each database.
    backends: BTreeMap<String, BTreeMap<i32, u64>>,
    /// This process (the clients).
    bench_cpu_ms: Option<u64>,
}

impl Snapshot {
    /// CPU ms the backends of `db` used between `self` and `later` (backends that appeared in
    /// between count in full).
    fn backend_cpu_ms(&self, later: &Snapshot, db: &str) -> u64 {
        let before = self.backends.get(db);
        later.backends.get(db).map_or(0, |now| {
            now.iter()
                .map(|(pid, ms)| {
                    ms.saturating_sub(before.and_then(|b| b.get(pid)).copied().unwrap_or(0))
                })
                .sum()
        })
    }
}

async fn snapshot(t: &Target, server: &str) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot {
        bench_cpu_ms: tandem_kit::stats::cpu_ms(std::process::id()),
        ..Snapshot::default()
    };
    let mut conn = admin(server).await?;
    let backends: Vec<(i32, String)> = sqlx::query_as(
        "SELECT pid, datname::text FROM pg_stat_activity WHERE datname IS NOT NULL AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await?;
    for (pid, db) in backends {
        if let Some(ms) = tandem_kit::stats::cpu_ms(pid as u32) {
            s.backends.entry(db).or_default().insert(pid, ms);
        }
    }
    for c in COMPONENTS {
        let v: Value = t
            .http
            .get(format!("{}/stats", t.url(c)))
            .send()
            .await?
            .json()
            .await
            .with_context(|| format!("GET {c}/stats"))?;
        let dbs = v["transactions"].as_object().cloned().unwrap_or_default();
        // One database per component; in one process (in-process stack) pick it by name.
        let pick = dbs.iter().find(|(name, _)| name.ends_with(c)).or_else(|| {
            if dbs.len() == 1 {
                dbs.iter().next()
            } else {
                None
            }
        });
        let (db, w, r) = match pick {
            Some((name, x)) => (
                name.clone(),
                x["writes"].as_u64().unwrap_or(0),
                x["reads"].as_u64().unwrap_or(0),
            ),
            None => (String::new(), 0, 0),
        };
        s.by_component.insert(
            c.to_string(),
            Counted {
                database: db,
                writes: w,
                reads: r,
                peak_rss_kib: v["peak_rss_kib"].as_u64(),
                // Read by pid: in-process components report the same process.
                cpu_ms: v["pid"]
                    .as_u64()
                    .and_then(|pid| tandem_kit::stats::cpu_ms(pid as u32)),
            },
        );
    }
    Ok(s)
}

async fn xact_commits(server: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut conn = admin(server).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT datname::text, xact_commit FROM pg_stat_database WHERE datname IS NOT NULL",
    )
    .fetch_all(&mut conn)
    .await?;
    Ok(rows.into_iter().collect())
}

// ---------------------------------------------------------------- closed loops

type OpFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
type Op = Arc<dyn Fn(usize, u64) -> OpFuture + Send + Sync>;

fn latency_of(h: &Histogram<u64>) -> Latency {
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p95_ms: ms(h.value_at_quantile(0.95)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// C clients, each running `op` back to back until the window ends; a progress line on stderr.
async fn closed_loop(
    label: &str,
    clients: usize,
    warmup: f64,
    duration: f64,
    op: Op,
) -> LoopResult {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(duration);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = {
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        let label = label.to_string();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                let phase = if Instant::now() < measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                eprint!(
                    "\r\x1b[K{label}: {phase} {:>5.1}s  {d} done  {}/s  {} errors",
                    start.elapsed().as_secs_f64(),
                    d - last,
                    failed.load(Ordering::Relaxed)
                );
                last = d;
            }
        })
    };
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (op, done, failed) = (op.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut h = new_histogram();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let (mut completed, mut ops) = (0u64, 0u64);
                let mut seq = 0u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    seq += 1;
                    ops += 1;
                    let r = op(client, seq).await;
                    let t1 = Instant::now();
                    let measured = t1 >= measure_from && t1 < end;
                    match r {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if measured {
                                completed += 1;
                                let _ = h.record((t1 - t0).as_micros().max(1) as u64);
                            }
                        }
                        Err(kind) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if measured {
                                *errors.entry(kind).or_default() += 1;
                            }
                        }
                    }
                }
                (h, errors, completed, ops)
            })
        })
        .collect();
    let mut h = new_histogram();
    let mut errors = BTreeMap::new();
    let (mut completed, mut total_ops) = (0, 0);
    for t in tasks {
        if let Ok((ch, ce, c, o)) = t.await {
            let _ = h.add(&ch);
            for (k, v) in ce {
                *errors.entry(k).or_default() += v;
            }
            completed += c;
            total_ops += o;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = progress.await;
    eprintln!();
    LoopResult {
        clients,
        measured_secs: duration,
        completed,
        per_sec: completed as f64 / duration,
        latency: latency_of(&h),
        errors,
        total_ops,
    }
}

fn http_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), String> {
    let mut req = http.post(url).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.map_err(http_error)?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

fn bench_input(workload: Workload, skus: usize, client: usize, seq: u64) -> (String, Value) {
    let order = format!("o-{}", uuid::Uuid::now_v7().simple());
    match workload {
        Workload::Checkout => {
            let s = sku((client * 7919 + seq as usize) % skus.max(1));
            let input = checkout_input(&order, &s, 1, "tok_visa", "GB");
            ("checkout".into(), input)
        }
        Workload::Noop => ("bench_noop".into(), json!({ "order_id": order })),
    }
}

fn settle_result(status: u16, body: &Value) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(format!("http {status}"));
    }
    match body["status"].as_str() {
        Some("completed") => Ok(()),
        Some(s) => Err(format!("saga {s}")),
        None => Err("no status".into()),
    }
}

fn orchestrated_op(t: &Target, workload: Workload, skus: usize, mode: RequestMode) -> Op {
    let http = t.http.clone();
    let base = t.url("orchestrator").to_string();
    Arc::new(move |client, seq| {
        let (http, base) = (http.clone(), base.clone());
        Box::pin(async move {
            let (def, input) = bench_input(workload, skus, client, seq);
            let body = json!({ "definition": def, "input": input });
            match mode {
                RequestMode::PostWait => {
                    let (status, v) =
                        post(&http, &format!("{base}/sagas?wait=30"), None, &body).await?;
                    settle_result(status, &v)
                }
                RequestMode::PostThenPoll => {
                    let (status, v) = post(&http, &format!("{base}/sagas"), None, &body).await?;
                    if status != 201 {
                        return Err(format!("http {status}"));
                    }
                    let id = v["id"].as_str().ok_or("no id")?.to_string();
                    let resp = http
                        .get(format!("{base}/sagas/{id}?wait=30"))
                        .send()
                        .await
                        .map_err(http_error)?;
                    let status = resp.status().as_u16();
                    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
                    settle_result(status, &v)
                }
            }
        })
    })
}

/// DTM's baseline: the client calls each step's action itself, in sequence, with the same
/// `{saga_id}:{step}:action` keys (the services run their barrier as usual).
fn direct_op(t: &Target, workload: Workload, skus: usize) -> Op {
    let http = t.http.clone();
    let inv = t.url("inventory").to_string();
    let pay = t.url("payment").to_string();
    let ship = t.url("shipping").to_string();
    Arc::new(move |client, seq| {
        let (http, inv, pay, ship) = (http.clone(), inv.clone(), pay.clone(), ship.clone());
        Box::pin(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let (_, input) = bench_input(workload, skus, client, seq);
            let calls: Vec<(String, &str)> = match workload {
                Workload::Checkout => vec![
                    (format!("{inv}/reservations"), "reserve_inventory"),
                    (format!("{pay}/charges"), "charge_payment"),
                    (format!("{ship}/shipments"), "create_shipment"),
                ],
                Workload::Noop => vec![
                    (format!("{inv}/noop"), "first"),
                    (format!("{pay}/noop"), "second"),
                ],
            };
            let mut reservation = Value::Null;
            for (url, step) in calls {
                let body = match step {
                    "reserve_inventory" => {
                        json!({ "order_id": input["order_id"], "items": input["items"] })
                    }
                    "charge_payment" => json!({
                        "order_id": input["order_id"], "customer_id": input["customer_id"],
                        "amount_cents": input["amount_cents"], "currency": input["currency"],
                        "card_token": input["payment"]["card_token"],
                    }),
                    "create_shipment" => json!({
                        "order_id": input["order_id"], "address": input["shipping"]["address"],
                        "items": input["items"], "reservation_id": reservation,
                    }),
                    _ => Value::Null,
                };
                let key = format!("{id}:{step}:action");
                let (status, v) = post(&http, &url, Some(&key), &body).await?;
                if !(200..300).contains(&status) {
                    return Err(format!("{step}: http {status}"));
                }
                if step == "reserve_inventory" {
                    reservation = v["reservation_id"].clone();
                }
            }
            Ok(())
        })
    })
}

// ---------------------------------------------------------------- the ceiling

/// Raw single-row INSERT commits/s on a scratch database, `clients` concurrent loops over at
/// most as many connections as the server has free (minus a reserve for other users).
async fn ceiling(args: &BenchArgs, clients: usize) -> anyhow::Result<Ceiling> {
    let name = format!("{}_ceiling", args.db_prefix);
    let url = db_url(&args.database_url, &name);
    tandem_kit::db::create_database_if_missing(&PgConnectOptions::from_str(&url)?).await?;
    let free: i64 = {
        let mut conn = admin(&args.database_url).await?;
        sqlx::query_scalar(
            "SELECT current_setting('max_connections')::bigint - count(*) FROM pg_stat_activity",
        )
        .fetch_one(&mut conn)
        .await?
    };
    let connections = clients.min((free - 15).max(1) as usize);
    let pool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .min_connections(connections as u32)
        .connect(&url)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ceiling (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let p = pool.clone();
    let op: Op = Arc::new(move |client, seq| {
        let p = p.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO ceiling (payload) VALUES ($1)")
                .bind(format!("{client}-{seq}"))
                .execute(&p)
                .await
                .map(|_| ())
                .map_err(|e| format!("sql: {e}"))
        })
    });
    let r = closed_loop(
        &format!("ceiling C={clients}"),
        clients,
        args.warmup.min(1.0),
        args.duration.min(5.0),
        op,
    )
    .await;
    sqlx::query("TRUNCATE ceiling").execute(&pool).await?;
    pool.close().await;
    Ok(Ceiling {
        connections,
        commits_per_sec: r.per_sec,
        latency: r.latency,
    })
}

// ---------------------------------------------------------------- the run

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({ "cores": cores, "mem_gib": mem_kib.map(|k| k as f64 / 1048576.0), "loadavg_at_start": load.trim() })
}

async fn postgres_settings(server: &str) -> anyhow::Result<Value> {
    let mut conn = admin(server).await?;
    let mut m = serde_json::Map::new();
    for s in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "shared_buffers",
        "max_connections",
        "wal_sync_method",
        "commit_delay",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {s}")))
            .fetch_one(&mut conn)
            .await?;
        m.insert(s.to_string(), Value::String(v));
    }
    Ok(Value::Object(m))
}

async fn sleep_secs(s: f64) {
    if s > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(s)).await;
    }
}

pub async fn bench(mut args: BenchArgs) -> anyhow::Result<()> {
    if !args.db_tls && !args.database_url.contains("sslmode=") {
        let sep = if args.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        args.database_url = format!("{}{sep}sslmode=disable", args.database_url);
    }
    let pg = postgres_settings(&args.database_url).await?;
    let machine = machine();
    eprintln!("starting the stack …");
    let t = start_target(&args).await?;
    wait_healthy(&t).await?;
    prepare(&t, &args).await?;
    prime(&t, &args).await?;
    let mut ceilings: BTreeMap<usize, Ceiling> = BTreeMap::new();
    let mut levels = Vec::new();
    sleep_secs(args.quiet).await;
    for &workload in &args.workloads {
        for &c in &args.clients {
            let s0 = snapshot(&t, &args.database_url).await?;
            let x0 = xact_commits(&args.database_url).await?;
            let label = format!("{workload:?} C={c}").to_lowercase();
            let orchestrated = closed_loop(
                &label,
                c,
                args.warmup,
                args.duration,
                orchestrated_op(&t, workload, args.skus, args.request),
            )
            .await;
            let s1 = snapshot(&t, &args.database_url).await?;
            let x1 = if args.quiet > 0.0 {
                sleep_secs(args.quiet).await;
                Some(xact_commits(&args.database_url).await?)
            } else {
                None
            };
            let n = orchestrated.total_ops.max(1) as f64;
            let mut transactions = BTreeMap::new();
            for comp in COMPONENTS {
                let (a, b) = (&s0.by_component[comp], &s1.by_component[comp]);
                let db = b.database.clone();
                let pg = x1
                    .as_ref()
                    .and_then(|x1| Some((x1.get(&db)? - x0.get(&db)?) as f64 / n));
                let cpu = match (a.cpu_ms, b.cpu_ms) {
                    (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / n),
                    _ => None,
                };
                transactions.insert(
                    comp.to_string(),
                    DbTransactions {
                        process_cpu_ms_per_saga: cpu,
                        postgres_cpu_ms_per_saga: s0.backend_cpu_ms(&s1, &db) as f64 / n,
                        database: db,
                        writes_per_saga: b.writes.saturating_sub(a.writes) as f64 / n,
                        reads_per_saga: b.reads.saturating_sub(a.reads) as f64 / n,
                        pg_xact_commit_per_saga: pg,
                    },
                );
            }
            let client_cpu_ms_per_saga = match (s0.bench_cpu_ms, s1.bench_cpu_ms) {
                (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / n),
                _ => None,
            };
            let ceiling = if args.no_ceiling {
                None
            } else {
                let x = match ceilings.get(&c) {
                    Some(x) => x.clone(),
                    None => ceiling(&args, c).await?,
                };
                ceilings.insert(c, x.clone());
                Some(x)
            };
            let direct = if args.no_direct {
                None
            } else {
                let r = closed_loop(
                    &format!("{label} direct"),
                    c,
                    args.warmup,
                    args.duration,
                    direct_op(&t, workload, args.skus),
                )
                .await;
                sleep_secs(args.quiet).await;
                Some(r)
            };
            let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
            levels.push(Level {
                workload,
                clients: c,
                ceiling_ratio: ceiling
                    .as_ref()
                    .and_then(|x| ratio(orchestrated.per_sec, x.commits_per_sec)),
                throughput_vs_direct: direct
                    .as_ref()
                    .and_then(|d| ratio(orchestrated.per_sec, d.per_sec)),
                latency_vs_direct_p50: direct
                    .as_ref()
                    .and_then(|d| ratio(orchestrated.latency.p50_ms, d.latency.p50_ms)),
                orchestrated,
                transactions,
                client_cpu_ms_per_saga,
                ceiling,
                direct,
            });
        }
    }
    let last = snapshot(&t, &args.database_url).await?;
    let peak_rss_kib = last
        .by_component
        .iter()
        .map(|(c, x)| (c.clone(), x.peak_rss_kib))
        .chain(std::iter::once((
            "tandem bench (clients)".to_string(),
            tandem_kit::stats::rss_kib().1,
        )))
        .collect();
    let report = Report {
        machine,
        postgres: pg,
        stack: match (&args.orchestrator_url, args.stack) {
            (Some(u), _) => format!("running stack at {u}"),
            (None, StackMode::Processes) => "child processes (release binaries)".into(),
            (None, StackMode::InProcess) => "in-process".into(),
        },
        request_mode: format!("{:?}", args.request),
        warmup_secs: args.warmup,
        duration_secs: args.duration,
        levels,
        peak_rss_kib,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(s) = t.in_process {
        s.stop().await?;
    }
    Ok(())
}

fn errors_text(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        "0".into()
    } else {
        e.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn print_report(r: &Report) {
    println!("machine: {}  postgres: {}", r.machine, r.postgres);
    println!(
        "stack: {}; requests: {}; warm-up {} s, measured {} s per run\n",
        r.stack, r.request_mode, r.warmup_secs, r.duration_secs
    );
    println!(
        "{:<9} {:>3} {:<13} {:>9} {:>8} {:>8} {:>8} {:>8}  errors",
        "workload", "C", "mode", "per s", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for l in &r.levels {
        let w = format!("{:?}", l.workload).to_lowercase();
        let row = |mode: &str, per: f64, lat: &Latency, err: String| {
            println!(
                "{:<9} {:>3} {:<13} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {}",
                w, l.clients, mode, per, lat.p50_ms, lat.p95_ms, lat.p99_ms, lat.max_ms, err
            );
        };
        row(
            "orchestrated",
            l.orchestrated.per_sec,
            &l.orchestrated.latency,
            errors_text(&l.orchestrated.errors),
        );
        if let Some(d) = &l.direct {
            row("direct", d.per_sec, &d.latency, errors_text(&d.errors));
        }
        if let Some(c) = &l.ceiling {
            row(
                &format!("ceiling({})", c.connections),
                c.commits_per_sec,
                &c.latency,
                String::new(),
            );
        }
        println!(
            "{:>14} sagas/ceiling {}   vs direct: throughput {}  p50 latency {}",
            "",
            opt(l.ceiling_ratio, 3),
            opt(l.throughput_vs_direct, 2),
            opt(l.latency_vs_direct_p50, 2),
        );
        let tx: Vec<String> = l
            .transactions
            .iter()
            .map(|(c, t)| {
                format!(
                    "{c} {:.2}w+{:.2}r (pg {})",
                    t.writes_per_saga,
                    t.reads_per_saga,
                    opt(t.pg_xact_commit_per_saga, 2)
                )
            })
            .collect();
        println!("{:>14} transactions/saga: {}", "", tx.join(", "));
        let cpu: Vec<String> = l
            .transactions
            .iter()
            .map(|(c, t)| {
                format!(
                    "{c} {} + pg {:.2}",
                    opt(t.process_cpu_ms_per_saga, 2),
                    t.postgres_cpu_ms_per_saga
                )
            })
            .collect();
        println!(
            "{:>14} CPU ms/saga: {}, clients {}",
            "",
            cpu.join(", "),
            opt(l.client_cpu_ms_per_saga, 2)
        );
    }
    println!();
    for (c, rss) in &r.peak_rss_kib {
        println!(
            "peak RSS {c}: {}",
            rss.map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        );
    }
}
