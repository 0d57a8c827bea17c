//! `tandem commit demo paxos`: Paxos Commit over the real services, scripted. It starts the real
//! binaries as processes — inventory, payment, shipping, two orchestrators and three acceptors
//! (F = 1), each with its own database `<prefix>_<component>` — and runs:
//!
//! 1. a declined card: the NO vote aborts everywhere;
//! 2. the leader crashes after the votes (crash point `orchestrator.paxos.after_votes`): the
//!    other orchestrator takes the lease — a higher epoch, so a higher ballot — and commits;
//! 3. the same with one acceptor down as well: it still commits;
//! 4. two of three acceptors down: it waits — undecided, every participant prepared, no effect
//!    visible in any service, no presumed abort — and commits once one acceptor returns.
//!
//! It checks what it observes after each step (all three services' own records: all effects or
//! none; stock conserved; nothing left prepared) and fails, naming the step, otherwise. The
//! end-to-end test (`tests/tests/paxos_commit.rs`) runs exactly this.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use crate::client::checkout_input;
use crate::launch::procs::{Output, Proc};
use crate::launch::{self, Layout, SERVICES};

pub(crate) const SKU: &str = "paxos-demo-sku";
const CRASH: &str = "orchestrator.paxos.after_votes";

/// What the demo runs on.
pub struct Options {
    pub layout: Layout,
    /// Where the `orchestrator`, `inventory`, `payment`, `shipping` and `acceptor` binaries are.
    pub bin_dir: PathBuf,
    /// Each process's output goes to `<log_dir>/<name>.log` (None: discarded).
    pub log_dir: Option<PathBuf>,
    /// Print the narration.
    pub verbose: bool,
}

/// What the demo saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Lease epoch (= ballot epoch) that finished each taken-over transaction.
    pub takeover_epochs: Vec<u64>,
    /// Ballots (rounds) the leader started while a majority of acceptors was down.
    pub rounds_while_blocked: u64,
    /// Seconds from the leader's crash to the decision, per takeover.
    pub takeover_secs: Vec<f64>,
}

/// A process of a demo (the 3PC demo, `crate::three_pc_demo`, shares these helpers).
pub(crate) struct Node {
    pub(crate) name: String,
    bin: &'static str,
    port: u16,
    env: Vec<(String, String)>,
    pub(crate) proc: Option<Proc>,
}

pub(crate) struct Demo {
    pub(crate) opts: Options,
    /// The demo's own calls: the operator token of the demo's tokens.
    http: reqwest::Client,
    /// Calls made as a participant would (the in-doubt query): the service token.
    service_http: reqwest::Client,
    pub(crate) nodes: Vec<Node>,
    started: Instant,
    report: Report,
}

/// Indices of the nodes: services 0–2, orchestrators 3–4, acceptors 5–7.
const O0: usize = 3;
const O1: usize = 4;
const A: [usize; 3] = [5, 6, 7];

/// The databases the demo uses (each process creates its own).
pub fn databases(layout: &Layout) -> Vec<String> {
    let mut names = layout.databases();
    names.extend((0..3).map(|k| layout.database(&format!("acceptor_{k}"))));
    names
}

/// Run the demo; Err names the first check that failed.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let mut d = Demo::new(opts)?;
    for i in 0..d.nodes.len() {
        let crash = (i == O0).then_some(CRASH);
        d.start(i, crash)?;
    }
    for i in 0..d.nodes.len() {
        d.wait_healthy(i).await?;
    }
    d.put_stock(10).await?;
    d.declined().await?;
    d.say("2. the leader (orch-0) crashes after the votes; orch-1 takes over");
    d.takeover("pd-1").await?;
    d.say("3. acceptor-2 down as well; orch-0 (restarted, armed again) crashes after the votes");
    d.stop(A[2]);
    d.start(O0, Some(CRASH))?;
    d.wait_healthy(O0).await?;
    d.takeover("pd-2").await?;
    d.majority_down().await?;
    ensure!(d.stock().await? == 7, "stock is not 10 - 3 committed units");
    d.say("every check passed: nothing was ever inconsistent");
    Ok(d.report)
}

impl Demo {
    fn new(opts: Options) -> anyhow::Result<Demo> {
        let layout = &opts.layout;
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..8 {
            ports.push(launch::free_port()?);
        }
        for (i, s) in SERVICES.iter().enumerate() {
            let env = launch::service_env(layout, s, ports[i], 3);
            nodes.push(node(s, s, ports[i], env));
        }
        let services = [0, 1, 2].map(|i| launch::loopback_url(ports[i]));
        let acceptors: Vec<String> = A.iter().map(|i| launch::loopback_url(ports[*i])).collect();
        for (i, name) in [(O0, "orch-0"), (O1, "orch-1")] {
            let mut env = launch::orchestrator_env(layout, ports[i], &services, name, 4);
            for (k, v) in [
                ("ACCEPTOR_URLS", acceptors.join(",")),
                ("LEASE_TTL_MS", "1500".into()),
                ("POLL_INTERVAL_MS", "100".into()),
                ("PAXOS_PROGRESS_MS", "300".into()),
            ] {
                env.push((k.into(), v));
            }
            nodes.push(node(name, "orchestrator", ports[i], env));
        }
        for (k, i) in A.into_iter().enumerate() {
            let env = launch::acceptor_env(layout, &format!("acceptor_{k}"), ports[i]);
            nodes.push(node(&format!("acceptor-{k}"), "acceptor", ports[i], env));
        }
        Demo::from_nodes(opts, nodes)
    }

    /// A demo of `nodes`.
    /// Every node runs with tokens of the demo's own (docs/security.md).
    pub(crate) fn from_nodes(opts: Options, mut nodes: Vec<Node>) -> anyhow::Result<Demo> {
        let tokens = launch::Tokens::generate();
        for n in &mut nodes {
            n.env.extend(tokens.env());
        }
        let http = |token: &str| {
            reqwest::Client::builder()
                .default_headers(crate::client::bearer_headers(Some(token)))
                .timeout(Duration::from_secs(40))
                .build()
        };
        Ok(Demo {
            opts,
            http: http(&tokens.operator)?,
            service_http: http(&tokens.service)?,
            nodes,
            started: Instant::now(),
            report: Report::default(),
        })
    }

    pub(crate) fn say(&self, line: &str) {
        if self.opts.verbose {
            println!("[{:6.2}s] {line}", self.started.elapsed().as_secs_f64());
        }
    }

    pub(crate) fn url(&self, i: usize) -> String {
        launch::loopback_url(self.nodes[i].port)
    }

    pub(crate) fn start(&mut self, i: usize, crash: Option<&str>) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        let bin = self.opts.bin_dir.join(n.bin);
        ensure!(
            bin.exists(),
            "{} not found: build the workspace first (cargo build --workspace)",
            bin.display()
        );
        let mut env = n.env.clone();
        if let Some(c) = crash {
            env.push(("TANDEM_CRASH".into(), c.into()));
        }
        let output = match &self.opts.log_dir {
            Some(dir) => Output::Append(dir.join(format!("{}.log", n.name))),
            None => Output::Discard,
        };
        n.proc = Some(Proc::spawn(&bin, &env, &output)?);
        Ok(())
    }

    pub(crate) fn stop(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proc.as_mut() {
            p.kill9();
        }
        self.say(&format!("   kill -9 {}", self.nodes[i].name));
    }

    pub(crate) async fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.url(i));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ensure!(
                Instant::now() < deadline,
                "{} did not start",
                self.nodes[i].name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub(crate) async fn get(&self, url: String) -> anyhow::Result<Value> {
        let r = self.http.get(&url).send().await?;
        ensure!(r.status().is_success(), "GET {url}: {}", r.status());
        Ok(r.json().await?)
    }

    /// `POST {url}` with a JSON body as the operator: the answer's body, or which status it got.
    pub(crate) async fn post(&self, url: String, body: &Value) -> anyhow::Result<Value> {
        let r = self.http.post(&url).json(body).send().await?;
        let status = r.status();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "POST {url}: {status} {answer}");
        Ok(answer)
    }

    /// `DELETE {url}` as the operator.
    pub(crate) async fn delete(&self, url: String) -> anyhow::Result<()> {
        let r = self.http.delete(&url).send().await?;
        ensure!(r.status().is_success(), "DELETE {url}: {}", r.status());
        Ok(())
    }

    pub(crate) async fn put_stock(&self, n: i64) -> anyhow::Result<()> {
        let r = self
            .http
            .put(format!("{}/stock/{SKU}", self.url(0)))
            .json(&json!({ "available": n }))
            .send()
            .await?;
        ensure!(r.status().is_success(), "setting the stock: {}", r.status());
        Ok(())
    }

    pub(crate) async fn stock(&self) -> anyhow::Result<i64> {
        let s = self.get(format!("{}/stock/{SKU}", self.url(0))).await?;
        s["available"].as_i64().context("no stock figure")
    }

    /// `POST /transactions` (Paxos Commit checkout of one unit) to orchestrator node `o`.
    async fn begin(&self, o: usize, order: &str, card: &str) -> anyhow::Result<String> {
        self.begin_with("paxos-commit", o, order, card).await
    }

    /// `POST /transactions` (a `protocol` checkout of one unit) to orchestrator node `o`.
    pub(crate) async fn begin_with(
        &self,
        protocol: &str,
        o: usize,
        order: &str,
        card: &str,
    ) -> anyhow::Result<String> {
        let r = self
            .http
            .post(format!("{}/transactions", self.url(o)))
            .json(&json!({ "protocol": protocol, "definition": "checkout",
                           "input": checkout_input(order, SKU, 1, card, "FR") }))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        ensure!(status == 201, "POST /transactions: {status} {body}");
        self.say(&format!(
            "   {order}: transaction {} led by {}",
            body["id"].as_str().unwrap_or("?"),
            self.nodes[o].name
        ));
        Ok(body["id"].as_str().context("no id")?.to_string())
    }

    /// The transaction once committed or aborted, read from orchestrator node `o`.
    pub(crate) async fn settled(&self, o: usize, id: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self
                .get(format!("{}/transactions/{id}?wait=20", self.url(o)))
                .await?;
            if t["state"] == "committed" || t["state"] == "aborted" {
                return Ok(t);
            }
            ensure!(Instant::now() < deadline, "transaction {id} did not settle");
        }
    }

    /// Each service's committed records of `order`: (reservations, payments, shipments).
    pub(crate) async fn effects(&self, order: &str) -> anyhow::Result<[usize; 3]> {
        let mut out = [0; 3];
        for (i, path) in ["reservations", "payments", "shipments"].iter().enumerate() {
            let list = self
                .get(format!("{}/{path}?order_id={order}", self.url(i)))
                .await?;
            out[i] = list.as_array().map_or(0, Vec::len);
        }
        Ok(out)
    }

    /// Which services hold transaction `id` prepared (None: any transaction).
    pub(crate) async fn prepared_in(&self, id: Option<&str>) -> anyhow::Result<Vec<bool>> {
        let mut out = Vec::new();
        for i in 0..SERVICES.len() {
            let s = self.get(format!("{}/2pc/status", self.url(i))).await?;
            let held = s["prepared"]
                .as_array()
                .is_some_and(|p| p.iter().any(|b| id.is_none_or(|id| b["txn_id"] == id)));
            out.push(held);
        }
        Ok(out)
    }

    /// Committed once in all three services, nothing left prepared; the view says so too.
    pub(crate) async fn committed_everywhere(&self, t: &Value, order: &str) -> anyhow::Result<()> {
        ensure!(t["state"] == "committed", "{order}: {}", t["state"]);
        let e = self.effects(order).await?;
        ensure!(
            e == [1, 1, 1],
            "{order}: effects {e:?}, not one in each service"
        );
        ensure!(
            self.prepared_in(None).await?.iter().all(|p| !p),
            "{order}: a prepared transaction is left"
        );
        self.say(&format!(
            "   {order}: committed in inventory, payment and shipping (one effect each)"
        ));
        Ok(())
    }

    async fn declined(&mut self) -> anyhow::Result<()> {
        self.say("1. a declined card: payment votes NO");
        let id = self.begin(O1, "pd-0", "tok_decline").await?;
        let t = self.settled(O1, &id).await?;
        ensure!(t["state"] == "aborted", "pd-0: {}", t["state"]);
        let e = self.effects("pd-0").await?;
        ensure!(e == [0, 0, 0], "pd-0 aborted but effects {e:?} are visible");
        self.say("   pd-0: aborted, no effect in any service");
        Ok(())
    }

    /// A transaction led by the armed orch-0: it crashes before deciding; orch-1 finishes.
    async fn takeover(&mut self, order: &str) -> anyhow::Result<()> {
        let id = self.begin(O0, order, "tok_visa").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let p = self.nodes[O0].proc.as_mut().context("orch-0 runs")?;
            if p.exited().is_some() {
                ensure!(p.aborted(), "orch-0 exited, but not at its crash point");
                break;
            }
            ensure!(Instant::now() < deadline, "orch-0 never reached {CRASH}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let crashed = Instant::now();
        self.say(&format!(
            "   orch-0 crashed at {CRASH} (votes in, nothing decided)"
        ));
        let t = self.settled(O1, &id).await?;
        let secs = crashed.elapsed().as_secs_f64();
        self.committed_everywhere(&t, order).await?;
        let epoch = t["lease"]["epoch"].as_u64().unwrap_or(0);
        ensure!(
            epoch >= 2,
            "{order}: finished under epoch {epoch}, not a takeover"
        );
        self.say(&format!(
            "   finished by orch-1 with ballot epoch {epoch}, {secs:.1} s after the crash"
        ));
        self.report.takeover_epochs.push(epoch);
        self.report.takeover_secs.push(secs);
        Ok(())
    }

    async fn majority_down(&mut self) -> anyhow::Result<()> {
        self.say("4. acceptor-1 down too: two of three acceptors are down");
        self.stop(A[1]);
        let id = self.begin(O1, "pd-3", "tok_visa").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.prepared_in(Some(&id)).await?.iter().all(|p| *p) {
            ensure!(
                Instant::now() < deadline,
                "pd-3: the participants did not prepare"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = self
            .get(format!("{}/transactions/{id}", self.url(O1)))
            .await?;
        ensure!(
            t["state"] == "preparing" && t["decision"].is_null(),
            "pd-3 decided without a majority of acceptors: {}",
            t["state"]
        );
        let e = self.effects("pd-3").await?;
        ensure!(
            e == [0, 0, 0],
            "pd-3 undecided, yet effects {e:?} are visible"
        );
        let q = self
            .service_http
            .get(format!("{}/transactions/{id}/decision", self.url(O1)))
            .send()
            .await?;
        ensure!(
            q.status() == 503,
            "pd-3: a participant's query got {}",
            q.status()
        );
        let rounds = self.rounds(&id).await?;
        ensure!(rounds >= 2, "pd-3: the leader did not keep trying");
        self.say(&format!(
            "   pd-3: waiting — undecided after {rounds} ballots, every service holds it \
             prepared, nothing visible, queries answered 503"
        ));
        self.report.rounds_while_blocked = rounds;
        self.say("   acceptor-1 restarts");
        self.start(A[1], None)?;
        let t = self.settled(O1, &id).await?;
        self.committed_everywhere(&t, "pd-3").await
    }

    /// The highest ballot round a leader of `id` forced (the orchestrator's `paxos_ballot`).
    async fn rounds(&self, id: &str) -> anyhow::Result<u64> {
        use sqlx::Connection;
        let url = self.opts.layout.database_url("orchestrator");
        let mut c = sqlx::PgConnection::connect(&url).await?;
        let b: Option<Value> =
            sqlx::query_scalar("SELECT paxos_ballot FROM transactions WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&mut c)
                .await?;
        Ok(b.and_then(|b| b["round"].as_u64()).unwrap_or(0))
    }
}

pub(crate) fn node(name: &str, bin: &'static str, port: u16, env: Vec<(String, String)>) -> Node {
    Node {
        name: name.to_string(),
        bin,
        port,
        env,
        proc: None,
    }
}
