//! `tandem kv`: the command line of the transactional key-value store (`services/kv`).
//!
//! - `tandem kv up`: three shards (:8091–8093) and the coordinator (:8090) in one process,
//!   data under `data/kv/`;
//! - `tandem kv get KEY` · `put KEY VALUE` · `del KEY`: one-key transactions;
//! - `tandem kv tx 'get a; put b 2; del c'`: a small transaction script, run (and retried on
//!   conflict) as one transaction, printing what each `get` saw;
//! - `tandem kv bench`: tx/s and p50/p99 at 1/16/64 clients for single- and cross-shard
//!   transactions, the abort rate on a few hot keys, durable writes per commit and the storage
//!   engine's raw commit rate, measured in the same run (see docs/kv.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use kv_client::Client;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tandem_cli::launch::Tokens;

#[derive(Debug, Args)]
pub struct KvArgs {
    /// Shard base URLs, in index order.
    #[arg(long, env = "KV_SHARDS", value_delimiter = ',', default_value = ::kv::DEFAULT_SHARDS, global = true)]
    shards: Vec<String>,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Run three shards and the coordinator in this process (default ports 8090–8093).
    Up {
        #[arg(long, default_value = "data/kv")]
        data_dir: PathBuf,
        /// Run open (no tokens; loopback only) instead of generating one token per role.
        #[arg(long)]
        open: bool,
        /// Where the generated tokens go (mode 0600, removed at stop). Default:
        /// `<temp dir>/tandem-kv/tokens`.
        #[arg(long)]
        tokens_out: Option<PathBuf>,
    },
    /// Read one key.
    Get { key: String },
    /// Write one key.
    Put { key: String, value: String },
    /// Delete one key.
    Del { key: String },
    /// Run a script as one transaction: `get K`, `put K V`, `del K`, separated by `;`.
    Tx { script: String },
    /// Benchmark the store (starts its own in-process store unless `--external`).
    Bench(BenchArgs),
}

/// Entry point of `tandem kv`.
pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    // The user's token (`tandem --token`, $TANDEM_TOKEN), if any.
    let client = connect(args.shards.clone(), crate_token().as_deref());
    match args.command {
        KvCommand::Up {
            data_dir,
            open,
            tokens_out,
        } => up(data_dir, open, tokens_out).await,
        KvCommand::Get { key } => {
            let v = client.get(&key).await?;
            println!("{}", v.as_deref().unwrap_or("(none)"));
            Ok(())
        }
        KvCommand::Put { key, value } => Ok(client.put(&key, &value).await?),
        KvCommand::Del { key } => Ok(client
            .transaction(|t| {
                let key = key.clone();
                async move { t.delete(&key).await }
            })
            .await?),
        KvCommand::Tx { script } => tx(&client, &script).await,
        KvCommand::Bench(b) => bench(args.shards, b).await,
    }
}

fn crate_token() -> Option<String> {
    tandem_cli::client::user_token()
}

/// A client of the shards at `shards`, sending `token` if given.
fn connect(shards: Vec<String>, token: Option<&str>) -> Client {
    match token {
        Some(t) => Client::with_token(shards, t),
        None => Client::new(shards),
    }
}

/// `config` accepting `tokens` (and sending their service token), or as it is.
fn with_tokens(mut config: ::kv::Config, tokens: Option<&Tokens>) -> ::kv::Config {
    if let Some(t) = tokens {
        config.auth = t.auth_config();
    }
    config
}

async fn up(data_dir: PathBuf, open: bool, tokens_out: Option<PathBuf>) -> anyhow::Result<()> {
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let shards = (0..3).map(|i| addr(::kv::FIRST_SHARD_PORT + i)).collect();
    let tokens = (!open).then(Tokens::generate);
    let tokens_path = match &tokens {
        Some(t) => {
            let path =
                tokens_out.unwrap_or_else(|| std::env::temp_dir().join("tandem-kv").join("tokens"));
            t.write_file(&path)
                .with_context(|| format!("writing the tokens to {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let local = ::kv::local::Local::start(
        3,
        &data_dir,
        Some((addr(::kv::COORDINATOR_PORT), shards)),
        |c| with_tokens(c, tokens.as_ref()),
    )
    .await
    .context("starting the store")?;
    println!(
        "kv: coordinator {} · shards {} · data in {}; Ctrl-C stops",
        local.coordinator_url,
        local.shard_urls.join(" "),
        data_dir.display()
    );
    match (&tokens, &tokens_path) {
        (Some(t), Some(path)) => {
            println!(
                "bearer tokens required: generated for this run in {}",
                path.display()
            );
            println!(
                "  export TANDEM_TOKEN={}   # the operator token",
                t.operator
            );
        }
        _ => println!("OPEN (--open): anyone on this machine may call every route"),
    }
    tandem_kit::http::shutdown_signal().await;
    if let Some(path) = &tokens_path {
        let _ = std::fs::remove_file(path);
    }
    local.stop().await;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Get(String),
    Put(String, String),
    Del(String),
}

fn parse_script(script: &str) -> anyhow::Result<Vec<Step>> {
    script
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let words: Vec<&str> = s.splitn(3, ' ').collect();
            match words.as_slice() {
                ["get", k] => Ok(Step::Get((*k).to_string())),
                ["put", k, v] => Ok(Step::Put((*k).to_string(), (*v).to_string())),
                ["del", k] => Ok(Step::Del((*k).to_string())),
                _ => anyhow::bail!("cannot parse {s:?}: expected `get K`, `put K V` or `del K`"),
            }
        })
        .collect()
}

async fn tx(client: &Client, script: &str) -> anyhow::Result<()> {
    let steps = parse_script(script)?;
    let seen = client
        .transaction(|t| {
            let steps = steps.clone();
            async move {
                let mut seen = Vec::new();
                for step in &steps {
                    match step {
                        Step::Get(k) => seen.push((k.clone(), t.read(k).await?)),
                        Step::Put(k, v) => t.write(k, v).await?,
                        Step::Del(k) => t.delete(k).await?,
                    }
                }
                Ok(seen)
            }
        })
        .await?;
    for (k, v) in seen {
        println!("{k} = {}", v.as_deref().unwrap_or("(none)"));
    }
    println!("committed");
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Workload {
    /// Read-for-update and write one key (of 10,000): one shard, one-phase commit.
    Single,
    /// Read-for-update and write two keys on different shards: 2PC.
    Cross,
    /// Two of four hot keys: contention, aborts and retries.
    Hot,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds measured per workload and client count.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Clients of the hot-key run.
    #[arg(long, default_value_t = 16)]
    hot_clients: usize,
    /// Benchmark the store at `--shards` instead of starting one in this process.
    #[arg(long)]
    external: bool,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    workload: Workload,
    clients: usize,
    committed: u64,
    attempts: u64,
    failed: u64,
    tx_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    abort_rate: f64,
    durable_writes_per_commit: f64,
}

async fn bench(shards: Vec<String>, args: BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tandem-kv-bench-{}", uuid::Uuid::now_v7()));
    // Its own store has tokens of its own; an external one gets the user's token.
    let tokens = (!args.external).then(Tokens::generate);
    let token = match &tokens {
        Some(t) => Some(t.operator.clone()),
        None => crate_token(),
    };
    let token = token.as_deref();
    let (local, urls) = if args.external {
        (None, shards)
    } else {
        let local =
            ::kv::local::Local::start(3, &dir, None, |c| with_tokens(c, tokens.as_ref())).await?;
        let mut urls = local.shard_urls.clone();
        urls.push(local.coordinator_url.clone());
        (Some(local), urls)
    };
    let shard_urls: Vec<String> = match &local {
        Some(l) => l.shard_urls.clone(),
        None => urls.clone(),
    };
    let client = connect(shard_urls, token);
    let raw_dir = dir.join("raw");
    let raw =
        tokio::task::spawn_blocking(move || ::kv::store::Store::raw_commit_rate(&raw_dir, 300))
            .await??;
    let mut rows = Vec::new();
    for workload in [Workload::Single, Workload::Cross] {
        for &clients in &args.clients {
            rows.push(measure(&client, &urls, token, workload, clients, args.seconds).await?);
        }
    }
    rows.push(
        measure(
            &client,
            &urls,
            token,
            Workload::Hot,
            args.hot_clients,
            args.seconds,
        )
        .await?,
    );
    if let Some(l) = local {
        l.stop().await;
    }
    std::fs::remove_dir_all(&dir).ok();
    print_rows(&rows, raw);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"engine_raw_commits_per_s": raw, "rows": rows}))?
        );
    }
    Ok(())
}

fn print_rows(rows: &[Row], raw: f64) {
    println!("engine (redb, immediate durability) raw commit rate: {raw:.0} commits/s");
    println!(
        "{:<7} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>13}",
        "work", "clients", "committed", "tx/s", "p50 ms", "p99 ms", "aborts", "durable/commit"
    );
    for r in rows {
        println!(
            "{:<7} {:>7} {:>9} {:>8.1} {:>8.2} {:>8.2} {:>7.1}% {:>13.2}",
            format!("{:?}", r.workload).to_lowercase(),
            r.clients,
            r.committed,
            r.tx_per_s,
            r.p50_ms,
            r.p99_ms,
            r.abort_rate * 100.0,
            r.durable_writes_per_commit
        );
    }
}

/// Durable write transactions counted by every process (`GET /status`).
async fn durable_writes(urls: &[String], token: Option<&str>) -> u64 {
    let http = reqwest::Client::builder()
        .default_headers(tandem_cli::client::bearer_headers(token))
        .build()
        .unwrap_or_default();
    let mut sum = 0;
    for u in urls {
        if let Ok(r) = http.get(format!("{u}/status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            sum += v["durable_commits"].as_u64().unwrap_or(0);
        }
    }
    sum
}

fn keys_for(workload: Workload, client: &Client) -> Vec<String> {
    let mut rng = rand::rng();
    match workload {
        Workload::Single => vec![format!("bench-{}", rng.random_range(0..10_000))],
        Workload::Cross => {
            let a = format!("bench-{}", rng.random_range(0..10_000));
            let b = (0..)
                .map(|_| format!("bench-{}", rng.random_range(0..10_000)))
                .find(|b| client.shard_of(b) != client.shard_of(&a))
                .unwrap_or_default();
            vec![a, b]
        }
        Workload::Hot => {
            let a = rng.random_range(0..4);
            let b = (a + rng.random_range(1..4)) % 4;
            vec![format!("hot-{a}"), format!("hot-{b}")]
        }
    }
}

struct Tally {
    hist: std::sync::Mutex<Histogram<u64>>,
    attempts: AtomicU64,
    committed: AtomicU64,
    failed: AtomicU64,
}

async fn measure(
    client: &Client,
    urls: &[String],
    token: Option<&str>,
    workload: Workload,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Row> {
    let tally = Arc::new(Tally {
        hist: std::sync::Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        attempts: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let before = durable_writes(urls, token).await;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client_loop(client.clone(), workload, end, tally.clone())))
        .collect();
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let durable = durable_writes(urls, token).await.saturating_sub(before);
    let committed = tally.committed.load(Ordering::Relaxed);
    let attempts = tally.attempts.load(Ordering::Relaxed);
    let hist = tally.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per = |n: u64| {
        if committed == 0 {
            0.0
        } else {
            n as f64 / committed as f64
        }
    };
    Ok(Row {
        workload,
        clients,
        committed,
        attempts,
        failed: tally.failed.load(Ordering::Relaxed),
        tx_per_s: committed as f64 / elapsed,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        abort_rate: if attempts == 0 {
            0.0
        } else {
            1.0 - committed as f64 / attempts as f64
        },
        durable_writes_per_commit: per(durable),
    })
}

async fn client_loop(client: Client, workload: Workload, end: Instant, tally: Arc<Tally>) {
    while Instant::now() < end {
        let keys = keys_for(workload, &client);
        let started = Instant::now();
        let result = client
            .transaction(|t| {
                let (keys, tally) = (keys.clone(), tally.clone());
                async move {
                    tally.attempts.fetch_add(1, Ordering::Relaxed);
                    for k in &keys {
                        let v: u64 = t
                            .read_for_update(k)
                            .await?
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        t.write(k, &(v + 1).to_string()).await?;
                    }
                    Ok(())
                }
            })
            .await;
        if result.is_ok() {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut h) = tally.hist.lock() {
                let _ = h.record(us.max(1));
            }
            tally.committed.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_script("get a; put b hello world ;del c;").expect("parse"),
            vec![
                Step::Get("a".into()),
                Step::Put("b".into(), "hello world".into()),
                Step::Del("c".into())
            ]
        );
        let e = parse_script("get a; frob b").expect_err("bad step");
        assert!(e.to_string().contains("frob b"), "{e}");
    }
}
