//! `tandem commit demo 2pc-blocking`: 2PC's central weakness, live on the real stack.
//!
//! The launcher ([`tandem_cli::launch`]) starts the real binaries as child processes: the three
//! services, a saga runner (an orchestrator that runs sagas) and the 2PC coordinator (another
//! orchestrator, on the same database, with its own instance id). For each ending the
//! coordinator starts with a crash point (`TANDEM_CRASH`) and a checkout runs as one 2PC
//! transaction; all three services vote YES and the coordinator dies:
//!
//! - `orchestrator.2pc.after_votes`: no Commit record — on restart it recovers from its log
//!   (`Begin` without a decision) and aborts (presumed abort);
//! - `orchestrator.2pc.after_decision`: Commit logged — on restart it commits.
//!
//! Meanwhile the services stay prepared (their `GET /2pc/status` is printed) and a second
//! checkout of the same SKU, run as a saga with a patient retry policy, waits on the stock row's
//! lock (the inventory answers 503 after `LOCK_TIMEOUT_MS`; the saga retries). The coordinator
//! restarts with the same instance id (its lease is still its own, so no other instance
//! decided meanwhile), recovers and finishes; the saga proceeds. Every claim the narrative makes
//! is checked against what the services' audit endpoints, the transaction and the saga say;
//! any difference makes the command fail.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tandem_cli::client::{Client, checkout_input};
use tandem_cli::launch::procs::{Output, Proc};
use tandem_cli::launch::{self, DEFAULT_SERVER, Layout, SERVICES};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The Postgres server (needs `max_prepared_transactions` > 0).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_SERVER)]
    database_url: String,
    /// Database name prefix of the demo's own stack (dropped and recreated at start, dropped
    /// at the end when every check passed).
    #[arg(long, default_value = "tandem_demo2pc")]
    db_prefix: String,
    /// Where the orchestrator / inventory / payment / shipping binaries are (default: next to
    /// this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// How long the coordinator stays down, in seconds.
    #[arg(long, default_value_t = 4.0)]
    outage: f64,
    /// The services' `lock_timeout` in ms: how long one lock wait lasts before the 503.
    #[arg(long, default_value_t = 1000)]
    lock_timeout_ms: u64,
}

/// One ending: the crash point and whether the transaction commits after recovery.
struct Ending {
    title: &'static str,
    crash: &'static str,
    commits: bool,
}

const ENDINGS: [Ending; 2] = [
    Ending {
        title: "no Commit record → abort",
        crash: "orchestrator.2pc.after_votes",
        commits: false,
    },
    Ending {
        title: "Commit logged → commit",
        crash: "orchestrator.2pc.after_decision",
        commits: true,
    },
];

/// The saga runner's definition of the second checkout: the shipped checkout with a retry
/// budget that outlasts the outage.
const PATIENT: &str = "checkout-patient";
const STOCK: i64 = 10;
const TXN_QTY: i64 = 2;
const SAGA_QTY: i64 = 1;

/// The coordinator: its binary, environment and current process.
struct Coordinator {
    bin: PathBuf,
    env: Vec<(String, String)>,
    url: String,
    proc: Option<Proc>,
    log: PathBuf,
}

impl Coordinator {
    /// (Re)start it, with `crash` as its `TANDEM_CRASH` (empty: none).
    fn start(&mut self, crash: &str) -> anyhow::Result<()> {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
        let mut env = self.env.clone();
        env.push(("TANDEM_CRASH".into(), crash.into()));
        self.proc = Some(Proc::spawn(
            &self.bin,
            &env,
            &Output::Append(self.log.clone()),
        )?);
        Ok(())
    }
}

struct Demo {
    /// Talks to the saga runner and the services.
    client: Client,
    coordinator: Coordinator,
    _others: Vec<Proc>,
    layout: Layout,
    t0: Instant,
    failures: Vec<String>,
    args: DemoArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut demo = Demo::start(args).await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string()[24..].to_string();
    for (i, ending) in ENDINGS.iter().enumerate() {
        demo.ending(i, ending, &run_id).await?;
    }
    demo.finish().await
}

impl Demo {
    async fn start(args: DemoArgs) -> anyhow::Result<Demo> {
        let layout = Layout::new(&args.database_url, &args.db_prefix);
        layout.drop_databases().await?;
        let log = std::env::temp_dir().join(format!("{}.log", args.db_prefix));
        let _ = std::fs::remove_file(&log);
        let output = Output::Append(log.clone());
        let mut ports = [0u16; 5];
        for p in &mut ports {
            *p = launch::free_port()?;
        }
        let [coord, runner, inv, pay, ship] = ports.map(launch::loopback_url);
        let services = [inv, pay, ship];
        // Tokens of the demo's own (docs/security.md): every process accepts them, the demo
        // sends the operator's.
        let tokens = launch::Tokens::generate();
        let mut others = Vec::new();
        for (i, s) in SERVICES.iter().enumerate() {
            let mut env = launch::service_env(&layout, s, ports[2 + i], 3);
            env.extend(tokens.env());
            env.push(("LOCK_TIMEOUT_MS".into(), args.lock_timeout_ms.to_string()));
            env.push(("TANDEM_CRASH".into(), String::new()));
            let bin = launch::binary(args.bin_dir.as_deref(), s)?;
            others.push(Proc::spawn(&bin, &env, &output)?);
        }
        let orchestrator = |port, instance| {
            let mut env = launch::orchestrator_env(&layout, port, &services, instance, 4);
            // The coordinator's lease outlives the outage: no other instance takes the
            // transaction over (and presumes abort) while it is down.
            env.push(("LEASE_TTL_MS".into(), "60000".into()));
            env.push(("POLL_INTERVAL_MS".into(), "100".into()));
            env.extend(tokens.env());
            env
        };
        let bin = launch::binary(args.bin_dir.as_deref(), "orchestrator")?;
        let mut env = orchestrator(ports[1], "saga-runner");
        env.push(("TANDEM_CRASH".into(), String::new()));
        others.push(Proc::spawn(&bin, &env, &output)?);
        let [inv, pay, ship] = &services;
        let client = Client::new(&runner, inv, pay, ship).with_token(&tokens.operator);
        let coordinator = Coordinator {
            bin,
            env: orchestrator(ports[0], "coordinator"),
            url: coord,
            proc: None,
            log: log.clone(),
        };
        let demo = Demo {
            client,
            coordinator,
            _others: others,
            layout,
            t0: Instant::now(),
            failures: Vec::new(),
            args,
        };
        demo.say(format!(
            "started inventory, payment, shipping and a saga runner (an orchestrator) as \
             processes; databases {}_*, logs in {}",
            demo.args.db_prefix,
            log.display()
        ));
        for url in [&demo.client.orchestrator, inv, pay, ship] {
            demo.healthy(url).await?;
        }
        demo.define_patient_checkout().await?;
        Ok(demo)
    }

    /// Narrative line with the time since the start.
    fn say(&self, what: impl AsRef<str>) {
        println!(
            "[{:>6.2}s] {}",
            self.t0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }

    /// A checked claim: printed with ✓, or ✗ and remembered (the command then fails).
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("          {} {what}", if ok { "✓" } else { "✗" });
        if !ok {
            self.failures.push(what);
        }
    }

    async fn healthy(&self, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(self.client.get(&format!("{url}/healthz")).await, Ok(r) if r.status == 200)
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{url} did not become healthy (see the log)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn define_patient_checkout(&self) -> anyhow::Result<()> {
        let mut def: Value = serde_json::from_str(orchestrator::CHECKOUT_DEFINITION)?;
        def["name"] = json!(PATIENT);
        def["policy"]["max_attempts"] = json!(1000);
        def["policy"]["backoff"] =
            json!({ "initial_ms": 100, "multiplier": 2.0, "max_ms": 500, "jitter": 0.2 });
        def["policy"]["max_retry_after_ms"] = json!(1000);
        let url = format!("{}/definitions", self.client.orchestrator);
        let r = self
            .client
            .send_json(reqwest::Method::POST, &url, &def)
            .await?;
        anyhow::ensure!(
            r.status < 300,
            "POST /definitions answered {}: {}",
            r.status,
            r.body
        );
        Ok(())
    }

    async fn finish(self) -> anyhow::Result<()> {
        println!();
        if self.failures.is_empty() {
            self.say("every check passed");
            let Demo {
                coordinator,
                _others,
                layout,
                ..
            } = self;
            drop((coordinator, _others)); // killed: their connections go before the databases
            layout.drop_databases().await?;
            return Ok(());
        }
        self.say(format!(
            "{} check(s) failed (databases {}_* kept):",
            self.failures.len(),
            self.args.db_prefix
        ));
        for f in &self.failures {
            println!("  - {f}");
        }
        anyhow::bail!("the demo did not observe what it explains")
    }
}

/// One ending's names.
struct Names {
    sku: String,
    txn_order: String,
    saga_order: String,
}

impl Demo {
    async fn ending(&mut self, i: usize, e: &Ending, run_id: &str) -> anyhow::Result<()> {
        let n = Names {
            sku: format!("demo-{run_id}-sku{}", i + 1),
            txn_order: format!("demo-{run_id}-{}-2pc", i + 1),
            saga_order: format!("demo-{run_id}-{}-saga", i + 1),
        };
        println!(
            "\n=== Ending {}: {} (crash point {})",
            i + 1,
            e.title,
            e.crash
        );
        let r = self.client.set_stock(&n.sku, STOCK).await?;
        anyhow::ensure!(r.status == 200, "PUT /stock answered {}", r.status);
        self.say(format!("stock of {} set to {STOCK}", n.sku));
        let txn = self.crash_coordinator(e, &n).await?;
        self.show_prepared(&txn, e).await?;
        let saga = self.start_waiting_saga(&n).await?;
        self.watch_outage(&txn, &saga).await?;
        self.restart_and_recover(&txn, &saga, e).await?;
        self.audit(&txn, e, &n).await
    }

    /// Start the coordinator with the ending's crash point, begin the 2PC checkout, wait for
    /// the crash: the transaction's id.
    async fn crash_coordinator(&mut self, e: &Ending, n: &Names) -> anyhow::Result<String> {
        self.coordinator.start(e.crash)?;
        let url = self.coordinator.url.clone();
        self.healthy(&url).await?;
        self.say(format!(
            "coordinator up at {url} with TANDEM_CRASH={}",
            e.crash
        ));
        let body = json!({
            "protocol": "2pc", "definition": "checkout",
            "input": checkout_input(&n.txn_order, &n.sku, TXN_QTY, "tok_visa", "GB"),
        });
        self.say(format!(
            "POST /transactions: checkout {} of {TXN_QTY} × {} as one 2PC transaction",
            n.txn_order, n.sku
        ));
        // The answer may be lost with the crash; the transaction is found by its order below.
        let _ = self
            .client
            .send_json(reqwest::Method::POST, &format!("{url}/transactions"), &body)
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let proc = self.coordinator.proc.as_mut().context("coordinator")?;
        while proc.exited().is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the coordinator did not crash");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let aborted = proc.aborted();
        self.say("the coordinator process died");
        self.check(
            aborted,
            format!("it aborted (SIGABRT) at crash point {}", e.crash),
        );
        let list = self
            .client
            .get(&format!(
                "{}/transactions?limit=50",
                self.client.orchestrator
            ))
            .await?;
        let id = list.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["business_key"] == n.txn_order.as_str()))
            .and_then(|t| t["id"].as_str())
            .context("the transaction is not in the coordinator's log")?;
        Ok(id.to_string())
    }

    async fn transaction(&self, id: &str, wait: u32) -> anyhow::Result<Value> {
        let url = format!("{}/transactions/{id}?wait={wait}", self.client.orchestrator);
        let r = self.client.get(&url).await?;
        anyhow::ensure!(r.status == 200, "GET /transactions/{id}: {}", r.status);
        Ok(r.body)
    }

    /// What the log says at the crash, and each service's prepared transactions.
    async fn show_prepared(&mut self, id: &str, e: &Ending) -> anyhow::Result<()> {
        let t = self.transaction(id, 0).await?;
        self.say(format!(
            "the coordinator's log (GET /transactions/{id} on the saga runner): state {}, decision {}",
            t["state"], t["decision"]
        ));
        let parts = t["participants"].as_array().cloned().unwrap_or_default();
        for p in &parts {
            println!(
                "          {:<10} vote {:<5} state {:<9} holding locks for {} ms",
                p["service"].as_str().unwrap_or("?"),
                p["vote"].as_str().unwrap_or("-"),
                p["state"].as_str().unwrap_or("?"),
                p["lock_hold_ms"]
            );
        }
        let yes = parts.iter().filter(|p| p["vote"] == "yes").count();
        self.check(yes == 3, format!("{yes} of 3 YES votes logged, expected 3"));
        let want = if e.commits {
            json!("commit")
        } else {
            Value::Null
        };
        self.check(
            t["decision"] == want,
            format!(
                "decision {} logged at the crash, expected {want}",
                t["decision"]
            ),
        );
        self.say("each service's GET /2pc/status:");
        for (s, status) in self.statuses().await? {
            let mine: Vec<&Value> = prepared_of(&status, id);
            for b in &mine {
                println!(
                    "          {s:<10} prepared {} for {} ms",
                    b["gid"].as_str().unwrap_or("?"),
                    b["age_ms"]
                );
            }
            self.check(
                mine.len() == 1,
                format!("{s} holds the transaction prepared"),
            );
        }
        Ok(())
    }

    async fn statuses(&self) -> anyhow::Result<Vec<(&'static str, Value)>> {
        let c = &self.client;
        let mut out = Vec::new();
        for (s, base) in SERVICES.iter().zip([&c.inventory, &c.payment, &c.shipping]) {
            out.push((*s, c.get(&format!("{base}/2pc/status")).await?.body));
        }
        Ok(out)
    }

    async fn start_waiting_saga(&self, n: &Names) -> anyhow::Result<String> {
        let input = checkout_input(&n.saga_order, &n.sku, SAGA_QTY, "tok_visa", "GB");
        let r = self.client.start_saga(PATIENT, &input, None).await?;
        anyhow::ensure!(
            r.status == 201,
            "POST /sagas answered {}: {}",
            r.status,
            r.body
        );
        self.say(format!(
            "POST /sagas: a second checkout {} of the same SKU, as a saga ({PATIENT}: its \
             retries outlast the outage)",
            n.saga_order
        ));
        Ok(r.body["id"].as_str().unwrap_or_default().to_string())
    }

    /// While the coordinator is down: the inventory's lock waits behind the prepared
    /// transaction, and the saga's failed attempts.
    async fn watch_outage(&mut self, id: &str, saga: &str) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs_f64(self.args.outage);
        let mut waits = Waits::default();
        while Instant::now() < until {
            let url = format!("{}/2pc/status", self.client.inventory);
            let status = self.client.get(&url).await?.body;
            for w in status["lock_waits"].as_array().into_iter().flatten() {
                let behind = w["blocked_by_gid"].as_str().unwrap_or("");
                let ms = w["waiting_ms"].as_i64().unwrap_or(0);
                if behind.contains(id) && waits.observe(&w["pid"], ms) {
                    let query = w["query"].as_str().unwrap_or("").split_whitespace();
                    self.say(format!(
                        "inventory: lock wait {}: backend {} waits for a row lock held by \
                         prepared {behind}: {}",
                        waits.count,
                        w["pid"],
                        query.collect::<Vec<_>>().join(" ")
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = self.client.wait_saga(saga, 0).await?;
        let step = &s["steps"][0];
        self.say(format!(
            "after {:.1} s down: saga {}, reserve_inventory sent {} time(s), last error: {}",
            self.args.outage,
            s["status"],
            step["attempts"],
            step["last_error"].as_str().unwrap_or("-")
        ));
        self.check(
            waits.count > 0,
            format!(
                "the saga's reservation waited on the prepared row lock ({} wait(s) seen, the \
                 longest {} ms when seen)",
                waits.count, waits.longest
            ),
        );
        let waiting = s["status"] == "running" && step["status"] != "succeeded";
        self.check(waiting, "the saga is still waiting at reserve_inventory");
        let retried = step["attempts"].as_u64().unwrap_or(0) >= 2;
        self.check(retried, "the saga retried after a 503 (lock_timeout)");
        Ok(())
    }

    /// Restart the coordinator (no crash point, same instance id and port); the transaction
    /// settles, then the saga.
    async fn restart_and_recover(
        &mut self,
        id: &str,
        saga: &str,
        e: &Ending,
    ) -> anyhow::Result<()> {
        let restart = Instant::now();
        self.coordinator.start("")?;
        self.say("coordinator restarted (same instance id: it takes its lease back at once)");
        let t = self.transaction(id, 30).await?;
        let settled_ms = restart.elapsed().as_millis();
        let want = if e.commits { "committed" } else { "aborted" };
        self.say(format!(
            "transaction {} {settled_ms} ms after the restart (decision {})",
            t["state"], t["decision"]
        ));
        for p in t["participants"].as_array().into_iter().flatten() {
            println!(
                "          {:<10} {:<9} held its locks {} ms",
                p["service"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("?"),
                p["lock_hold_ms"]
            );
        }
        println!(
            "          the coordinator's message log (before the crash, then after the restart):"
        );
        print_messages(&t);
        self.check(t["state"] == want, format!("the transaction is {want}"));
        let s = self.client.settle(saga, 60).await?;
        self.say(format!(
            "saga {} {} ms after the restart; its timeline:",
            s["status"],
            restart.elapsed().as_millis()
        ));
        print!("{}", tandem_cli::demo::timeline(&s));
        self.check(s["status"] == "completed", "the waiting checkout completed");
        Ok(())
    }

    /// The services' own records, as the narrative says they are.
    async fn audit(&mut self, id: &str, e: &Ending, n: &Names) -> anyhow::Result<()> {
        let c = self.client.clone();
        self.say("audit (the services' own endpoints):");
        let left = STOCK - SAGA_QTY - if e.commits { TXN_QTY } else { 0 };
        let stock = c.stock(&n.sku).await?;
        self.check(
            stock["available"] == left,
            format!(
                "{}: available {} (expected {left})",
                n.sku, stock["available"]
            ),
        );
        let effects = if e.commits { 1 } else { 0 };
        for (order, want, whose) in [(&n.txn_order, effects, "2PC"), (&n.saga_order, 1, "saga")] {
            let res = count(&c.reservations(order).await?, "status", "held");
            let charges = count(&c.payments(order).await?, "kind", "charge");
            let ships = count(&c.shipments(order).await?, "status", "created");
            self.check(
                [res, charges, ships] == [want; 3],
                format!(
                    "{whose} order {order}: {res} reservation(s), {charges} charge(s), {ships} \
                     shipment(s) (expected {want} each)"
                ),
            );
        }
        let left_prepared: usize = self
            .statuses()
            .await?
            .iter()
            .map(|(_, s)| prepared_of(s, id).len())
            .sum();
        self.check(
            left_prepared == 0,
            "no service holds the transaction prepared any more",
        );
        Ok(())
    }
}

/// A transaction's message log, one line each, in ms since the transaction began.
fn print_messages(t: &Value) {
    let at = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let t0 = at(&t["created_at"]);
    for m in t["messages"].as_array().into_iter().flatten() {
        let ms = match (t0, at(&m["at"])) {
            (Some(a), Some(b)) => (b - a).num_milliseconds(),
            _ => 0,
        };
        let arrow = if m["dir"] == "out" { "→" } else { "←" };
        let d = &m["detail"];
        let detail = [&d["vote"], &d["outcome"], &d["decision"]]
            .into_iter()
            .find_map(|v| v.as_str())
            .unwrap_or("");
        println!(
            "            {ms:>+7}ms {arrow} {:<12} {:<8} {detail}",
            m["peer"].as_str().unwrap_or("?"),
            m["kind"].as_str().unwrap_or("?")
        );
    }
}

/// Lock waits seen in successive looks at `GET /2pc/status`.
#[derive(Default)]
struct Waits {
    /// Backend pid → how long it had waited when last seen.
    last: Vec<(Value, i64)>,
    count: usize,
    longest: i64,
}

impl Waits {
    /// Backend `pid` has waited `ms`: true if this is a new wait (a backend not seen waiting
    /// before, or waiting less than when last seen: the saga's next attempt).
    fn observe(&mut self, pid: &Value, ms: i64) -> bool {
        self.longest = self.longest.max(ms);
        let new = match self.last.iter_mut().find(|(p, _)| p == pid) {
            Some((_, last)) => std::mem::replace(last, ms) > ms,
            None => {
                self.last.push((pid.clone(), ms));
                true
            }
        };
        self.count += usize::from(new);
        new
    }
}

/// The prepared branches of transaction `id` in a service's `GET /2pc/status`.
fn prepared_of<'a>(status: &'a Value, id: &str) -> Vec<&'a Value> {
    status["prepared"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["txn_id"].as_str() == Some(id))
        .collect()
}

fn count(list: &[Value], field: &str, value: &str) -> usize {
    list.iter().filter(|x| x[field] == value).count()
}
