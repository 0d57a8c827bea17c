//! `tandem saga bench-console`: the console's reads with many sagas stored. It starts the stack in
//! this process on throwaway databases (`<prefix>_*`, dropped first and, unless `--keep`, at
//! the end), runs a few real checkouts of each ending (completed; compensated after a declined
//! card and after an undeliverable address; failed with a compensation out of budget), then
//! stores `--sagas` more as copies of those rows and their event logs (one `INSERT … SELECT`
//! per batch; each copy gets its own UUIDv7 id spread over the last `--days` days, its own
//! business key and `business_keys` entry), analyzes the tables, and times the requests the
//! dashboard makes, one at a time as one operator's browser does: the list's first page, each
//! filter, a later page, a search by business key and by id, and a saga's page
//! (`GET /sagas/{id}` and its definition version). It prints p50 / p95 / p99 / max per request
//! against the targets (list and filters p95 ≤ 100 ms, saga page ≤ 200 ms); `--json` prints the
//! figures as JSON.

use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use serde_json::{Value, json};
use uuid::Uuid;

use super::measure::{Latency, Reported};
use super::stats::{machine, postgres_settings};
use crate::client::{Client, checkout_input};
use crate::launch::stack::{Stack, StackConfig};
use crate::launch::{DEFAULT_SERVER, Layout};

/// p95 targets (ms): the list and its filters, a saga's page.
const LIST_TARGET_MS: f64 = 100.0;
const PAGE_TARGET_MS: f64 = 200.0;

#[derive(Debug, Args)]
pub struct ConsoleBenchArgs {
    /// The Postgres server.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SERVER)]
    pub database_url: String,
    /// Database name prefix (its databases are dropped and recreated at start).
    #[arg(long, default_value = "tandem_bench_console")]
    pub db_prefix: String,
    /// How many sagas to store (besides the few real ones they copy).
    #[arg(long, env = "TANDEM_CONSOLE_SAGAS", default_value_t = 100_000)]
    pub sagas: usize,
    /// Their creation times spread over this many days before now.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Timed requests per kind of request.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Keep the databases afterwards (to EXPLAIN ANALYZE the queries by hand).
    #[arg(long)]
    pub keep: bool,
}

/// One real saga to copy, and how often (per mille) its kind appears among the copies.
struct Template {
    id: Uuid,
    per_mille: usize,
}

/// A saga of each ending, run for real through the stack; returns them with their shares.
async fn real_sagas(c: &Client) -> anyhow::Result<Vec<Template>> {
    let mut short: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION)?;
    short["name"] = json!("checkout-short-budget");
    short["policy"]["compensation_max_attempts"] = json!(2);
    // And one no saga uses: the console's definition filter offers it too.
    let mut unused = short.clone();
    unused["name"] = json!("checkout-unused");
    for def in [&short, &unused] {
        let url = format!("{}/definitions", c.orchestrator);
        let r = c.send_json(reqwest::Method::POST, &url, def).await?;
        ensure!(r.status < 300, "POST /definitions: {} {}", r.status, r.body);
    }
    ensure!(c.set_stock("sku-bench", 1000).await?.status == 200);
    c.add_fault(
        "payment",
        &json!({"order_id": "bench-failed", "op": "compensation", "kind": "transient", "times": 2}),
    )
    .await?;
    // (definition, order, card, country, expected status, share per mille)
    let runs = [
        ("checkout", "bench-ok", "tok_visa", "FR", "completed", 850),
        (
            "checkout",
            "bench-declined",
            "tok_decline",
            "FR",
            "compensated",
            90,
        ),
        ("checkout", "bench-zz", "tok_visa", "ZZ", "compensated", 50),
        (
            "checkout-short-budget",
            "bench-failed",
            "tok_decline",
            "FR",
            "failed",
            10,
        ),
    ];
    let mut out = Vec::new();
    for (def, order, card, country, want, per_mille) in runs {
        let input = checkout_input(order, "sku-bench", 1, card, country);
        let r = c.start_saga(def, &input, None).await?;
        ensure!(r.status == 201, "POST /sagas: {} {}", r.status, r.body);
        let id = r.body["id"].as_str().context("a saga id")?.to_string();
        let s = c.settle(&id, 60).await?;
        ensure!(
            s["status"] == want,
            "saga {order} ended {} (expected {want})",
            s["status"]
        );
        out.push(Template {
            id: id.parse()?,
            per_mille,
        });
    }
    Ok(out)
}

/// Store `n` copies of the templates (each with its own id, business key and times), in
/// batches, then analyze the tables as autovacuum would.
async fn store_copies(
    pool: &sqlx::PgPool,
    templates: &[Template],
    n: usize,
    days: u32,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let span_ms = i64::from(days) * 86_400_000;
    // Template index by share: copy i is of kind `kinds[i % 1000]`.
    let kinds: Vec<usize> = templates
        .iter()
        .enumerate()
        .flat_map(|(k, t)| std::iter::repeat_n(k, t.per_mille))
        .collect();
    ensure!(kinds.len() == 1000, "the shares add up to 1000");
    let template_ids: Vec<Uuid> = templates.iter().map(|t| t.id).collect();
    const BATCH: usize = 10_000;
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let mut ids = Vec::with_capacity(end - start);
        let mut created = Vec::with_capacity(end - start);
        let mut template = Vec::with_capacity(end - start);
        let mut keys = Vec::with_capacity(end - start);
        for i in start..end {
            // Oldest first, evenly over the span; a UUIDv7 of that time.
            let at = now - chrono::Duration::milliseconds(span_ms - span_ms * i as i64 / n as i64);
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                at.timestamp() as u64,
                at.timestamp_subsec_nanos(),
            );
            ids.push(Uuid::new_v7(ts));
            created.push(at);
            template.push(template_ids[kinds[(i * 7919) % 1000]]);
            keys.push(format!("bench-{i:06}"));
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO sagas (id, definition, version, business_key, input, input_hash, status, \
                 state, next_run_at, lease_owner, lease_until, lease_epoch, created_at, updated_at) \
             SELECT c.id, t.definition, t.version, c.key, \
                    jsonb_set(t.input, '{order_id}', to_jsonb(c.key)), t.input_hash, t.status, \
                    t.state, NULL, NULL, NULL, t.lease_epoch, c.at, \
                    c.at + (t.updated_at - t.created_at) \
             FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[]) \
                 AS c(id, at, template, key) \
             JOIN sagas t ON t.id = c.template",
        )
        .bind(&ids)
        .bind(&created)
        .bind(&template)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO saga_events (saga_id, at, kind, step, detail) \
             SELECT c.id, c.at + (e.at - t.created_at), e.kind, e.step, e.detail \
             FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[]) AS c(id, at, template) \
             JOIN sagas t ON t.id = c.template \
             JOIN saga_events e ON e.saga_id = c.template ORDER BY c.id, e.seq",
        )
        .bind(&ids)
        .bind(&created)
        .bind(&template)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO business_keys (definition, business_key, kind, id) \
             SELECT s.definition, s.business_key, 'saga', s.id FROM sagas s \
             WHERE s.id = ANY($1::uuid[])",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    sqlx::query("VACUUM ANALYZE sagas").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE saga_events")
        .execute(pool)
        .await?;
    Ok(())
}

/// One kind of request the console makes, and its target.
struct Probe {
    name: &'static str,
    target_ms: f64,
    /// The request paths of one timed operation (a saga's page is two requests).
    paths: Box<dyn Fn(usize) -> Vec<String>>,
}

#[derive(Debug, serde::Serialize)]
struct ProbeResult {
    name: &'static str,
    requests: usize,
    /// Items the first request answered (a sanity check that the filter matches something).
    items: usize,
    latency: Latency,
    target_p95_ms: f64,
    met: bool,
}

/// The dashboard's requests over the stored sagas.
fn probes(sample: Vec<(Uuid, String)>, middle: Uuid, from: String, to: String) -> Vec<Probe> {
    let list = |name: &'static str, q: String| Probe {
        name,
        target_ms: LIST_TARGET_MS,
        paths: Box::new(move |_| vec![format!("/sagas?{q}&limit=50")]),
    };
    let keys = sample.clone();
    let ids = sample.clone();
    let pages = sample;
    vec![
        list("list: first page", String::new()),
        list("filter: status=completed", "status=completed".into()),
        list("filter: status=compensated", "status=compensated".into()),
        list("filter: status=failed", "status=failed".into()),
        list(
            "filter: definition=checkout-short-budget",
            "definition=checkout-short-budget".into(),
        ),
        list(
            "filter: definition no saga uses",
            "definition=checkout-unused".into(),
        ),
        list(
            "filter: status=compensated&definition=checkout",
            "status=compensated&definition=checkout".into(),
        ),
        list("filter: a day's time range", format!("from={from}&to={to}")),
        list(
            "list: a page in the middle (cursor)",
            format!("cursor={middle}"),
        ),
        list(
            "filter: status=failed, a page in the middle",
            format!("status=failed&cursor={middle}"),
        ),
        Probe {
            name: "search: business key",
            target_ms: LIST_TARGET_MS,
            paths: Box::new(move |i| vec![format!("/sagas?q={}&limit=50", keys[i % keys.len()].1)]),
        },
        Probe {
            name: "search: saga id",
            target_ms: LIST_TARGET_MS,
            paths: Box::new(move |i| vec![format!("/sagas?q={}&limit=50", ids[i % ids.len()].0)]),
        },
        Probe {
            name: "saga page (saga + its definition version)",
            target_ms: PAGE_TARGET_MS,
            paths: Box::new(move |i| {
                let (id, _) = &pages[i % pages.len()];
                vec![format!("/sagas/{id}"), "{definition}".into()]
            }),
        },
    ]
}

/// Time `requests` operations of `p`, one after the other.
async fn run_probe(c: &Client, p: &Probe, requests: usize) -> anyhow::Result<ProbeResult> {
    let mut h = Reported::default();
    let mut items = 0;
    for i in 0..requests {
        let started = Instant::now();
        let mut definition: Option<String> = None;
        for path in (p.paths)(i) {
            // A saga's page asks for the saga's own definition version once it has the saga.
            let path = match (path.as_str(), &definition) {
                ("{definition}", Some(d)) => d.clone(),
                ("{definition}", None) => anyhow::bail!("{}: no saga read first", p.name),
                _ => path,
            };
            let r = c.get(&format!("{}{path}", c.orchestrator)).await?;
            ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.body);
            if let (Some(name), Some(version)) =
                (r.body["definition"].as_str(), r.body["version"].as_str())
            {
                definition = Some(format!("/definitions/{name}?version={version}"));
            }
            if i == 0 {
                items += r.body["items"].as_array().map_or(1, Vec::len);
            }
        }
        h.record(&vec![("t".to_string(), started.elapsed())]);
    }
    let latency = h.latencies().remove("t").context("timed requests")?;
    Ok(ProbeResult {
        name: p.name,
        requests,
        items,
        met: latency.p95_ms <= p.target_ms,
        target_p95_ms: p.target_ms,
        latency,
    })
}

/// Run the bench; `json`: print the figures as JSON instead of a table.
/// Run the real sagas, store the copies, time the probes: the report.
async fn run(
    c: &Client,
    layout: &Layout,
    a: &ConsoleBenchArgs,
    machine: Value,
) -> anyhow::Result<Value> {
    let pool = tandem_kit::db::connect(&layout.database_url("orchestrator"), 2).await?;
    eprintln!("running real sagas to copy …");
    let templates = real_sagas(c).await?;
    let started = Instant::now();
    eprintln!("storing {} sagas …", a.sagas);
    store_copies(&pool, &templates, a.sagas, a.days).await?;
    let stored_secs = started.elapsed().as_secs_f64();
    let (total, events): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM sagas), (SELECT count(*) FROM saga_events)")
            .fetch_one(&pool)
            .await?;
    let sample: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, business_key FROM sagas TABLESAMPLE BERNOULLI (1) \
         WHERE business_key LIKE 'bench-%' LIMIT 500",
    )
    .fetch_all(&pool)
    .await?;
    ensure!(!sample.is_empty(), "no stored saga sampled");
    let middle: Uuid = sqlx::query_scalar("SELECT id FROM sagas ORDER BY id OFFSET $1 LIMIT 1")
        .bind(total / 2)
        .fetch_one(&pool)
        .await?;
    let day = chrono::Utc::now() - chrono::Duration::days(i64::from(a.days) / 2);
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (from, to) = (fmt(day), fmt(day + chrono::Duration::days(1)));
    let mut results = Vec::new();
    for p in probes(sample, middle, from, to) {
        // A few untimed requests first (connections, plans, caches).
        run_probe(c, &p, 5).await?;
        let r = run_probe(c, &p, a.requests).await?;
        eprintln!(
            "{:<50} p50 {:>7.2} ms  p95 {:>7.2} ms  (target {:>3}) {}",
            r.name,
            r.latency.p50_ms,
            r.latency.p95_ms,
            r.target_p95_ms,
            if r.met { "ok" } else { "MISSED" }
        );
        results.push(r);
    }
    let pg = postgres_settings(&a.database_url).await?;
    let size: String = sqlx::query_scalar(
        "SELECT pg_size_pretty(pg_total_relation_size('sagas') + \
         pg_total_relation_size('saga_events'))",
    )
    .fetch_one(&pool)
    .await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(json!({
        "sagas": total, "events": events, "stored_in_secs": stored_secs,
        "tables_size": size, "requests_per_probe": a.requests,
        "machine": machine, "loadavg_at_end": load.trim(), "postgres": pg,
        "results": results,
    }))
}

pub async fn bench_console(a: ConsoleBenchArgs, json: bool) -> anyhow::Result<()> {
    ensure!(a.sagas >= 1000, "--sagas: at least 1000");
    ensure!(a.requests >= 20, "--requests: at least 20");
    let machine = machine();
    let layout = Layout::new(a.database_url.clone(), a.db_prefix.clone());
    layout.drop_databases().await?;
    let mut cfg = StackConfig::new(layout.clone(), 0);
    cfg.orchestrator = Box::new(|c| c.db_pool_size = 8);
    let stack = Stack::start(cfg).await?;
    let c = Client::for_stack(&stack);
    let r = run(&c, &layout, &a, machine).await;
    stack.stop().await?;
    if !a.keep {
        layout.drop_databases().await?;
    }
    let report = r?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let missed: Vec<&str> = report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["met"] == false)
        .filter_map(|r| r["name"].as_str())
        .collect();
    ensure!(missed.is_empty(), "targets missed: {}", missed.join("; "));
    Ok(())
}

fn print_table(r: &Value) {
    println!(
        "{} sagas ({} events, {}) stored in {:.1} s; {} timed requests each, one at a time",
        r["sagas"],
        r["events"],
        r["tables_size"].as_str().unwrap_or(""),
        r["stored_in_secs"].as_f64().unwrap_or(0.0),
        r["requests_per_probe"]
    );
    println!(
        "machine: {}; load average at the end: {}",
        r["machine"], r["loadavg_at_end"]
    );
    println!(
        "{:<50} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "request", "p50 ms", "p95 ms", "p99 ms", "max ms", "target", "met"
    );
    for p in r["results"].as_array().into_iter().flatten() {
        let l = &p["latency"];
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<50} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>6}",
            p["name"].as_str().unwrap_or(""),
            f("p50_ms"),
            f("p95_ms"),
            f("p99_ms"),
            f("max_ms"),
            p["target_p95_ms"],
            if p["met"] == true { "yes" } else { "NO" }
        );
    }
}
