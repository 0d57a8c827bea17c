//! The stack under test: a running one (`--orchestrator-url`), or the bench's own, started by
//! the launcher ([`crate::launch`]) as the real binaries or in this process, on freshly
//! recreated databases `<prefix>_<component>`; with a choreographed workload, also the orders
//! entry point and the services' relays and consumers on NATS (`--nats-url`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::{BenchArgs, StackMode};
use crate::client::bearer_headers;
use crate::launch::procs::{Output, Proc};
use crate::launch::stack::{Stack, StackConfig};
use crate::launch::{COMPONENTS, Layout, ORDERS, SERVICES, Tokens};

pub struct Target {
    /// Calls as a user: the operator token of the bench's own stack, or the user's token
    /// (`--token` / `$TANDEM_TOKEN`) against a running one.
    pub http: reqwest::Client,
    /// Calls as the orchestrator (the direct baselines call the services' saga endpoints,
    /// which need a service token): the bench's own stack's, or `$TANDEM_SERVICE_TOKEN`
    /// (else the user's token) against a running one.
    pub direct_http: reqwest::Client,
    /// Every component's URL: the orchestrator, the services, then the acceptors
    /// (`acceptor_0` …) if any were started.
    urls: BTreeMap<String, String>,
    _children: Vec<Proc>,
    pub in_process: Option<Stack>,
    /// NATS, when the choreographed checkout runs (its events are counted there).
    pub nats: Option<async_nats::jetstream::Context>,
    /// The bench's own stack's layout (for a component whose `/stats` names no database of
    /// its own: orders, whose writes only `pg_stat_database` counts).
    pub layout: Option<Layout>,
}

impl Target {
    /// The URL of a component (`orchestrator`, `inventory`, …).
    pub fn url(&self, component: &str) -> &str {
        &self.urls[component]
    }

    /// Every component under test: [`COMPONENTS`], the acceptors if any, and `orders` with the
    /// choreographed checkout.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.urls.keys().map(String::as_str)
    }

    /// `GET {component}{path}`, its JSON body.
    pub async fn get_json(&self, component: &str, path: &str) -> anyhow::Result<Value> {
        self.http
            .get(format!("{}{path}", self.url(component)))
            .send()
            .await?
            .json()
            .await
            .with_context(|| format!("GET {component}{path}"))
    }

    fn new((http, direct_http): Clients, urls: [String; 4]) -> Self {
        Target {
            http,
            direct_http,
            urls: COMPONENTS.map(String::from).into_iter().zip(urls).collect(),
            _children: vec![],
            in_process: None,
            nats: None,
            layout: None,
        }
    }
}

/// The NATS server of the choreographed workloads, if any runs.
fn nats_url(args: &BenchArgs) -> Option<String> {
    let choreo = args.workloads.iter().any(|w| w.load(args).choreographed());
    choreo.then(|| args.nats_url.clone())
}

/// The user's and the orchestrator's HTTP clients ([`Target::http`], [`Target::direct_http`]).
type Clients = (reqwest::Client, reqwest::Client);

fn http_client(headers: reqwest::header::HeaderMap) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The clients of a stack with `tokens`.
fn clients(tokens: &Tokens) -> anyhow::Result<Clients> {
    Ok((
        http_client(bearer_headers(Some(&tokens.operator)))?,
        http_client(bearer_headers(Some(&tokens.service)))?,
    ))
}

pub async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
    start_with_env(args, &[]).await
}

/// [`start`], with `extra` added to every spawned process's environment (`--stack processes`;
/// ignored otherwise).
pub async fn start_with_env(
    args: &BenchArgs,
    extra: &[(String, String)],
) -> anyhow::Result<Target> {
    let nats = nats_url(args);
    if let Some(urls) = args.running.urls()? {
        anyhow::ensure!(
            nats.is_none(),
            "the choreographed workload runs on the bench's own stack only"
        );
        let service = std::env::var(tandem_kit::auth::SERVICE_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty());
        let direct = match service {
            Some(t) => bearer_headers(Some(&t)),
            None => crate::client::token_headers(),
        };
        let http = (
            http_client(crate::client::token_headers())?,
            http_client(direct)?,
        );
        return Ok(Target::new(http, urls));
    }
    // The bench's own stack: tokens of its own, like `tandem up`.
    let tokens = Tokens::generate();
    let http = clients(&tokens)?;
    let layout = Layout::new(&args.database_url, &args.db_prefix);
    layout.drop_databases().await?;
    tandem_kit::db::drop_database(&layout.server_url, &layout.database(ORDERS)).await?;
    for k in 0..args.acceptors {
        let db = layout.database(&acceptor(k));
        tandem_kit::db::drop_database(&layout.server_url, &db).await?;
    }
    anyhow::ensure!(
        args.acceptors == 0 || args.stack == StackMode::Processes,
        "acceptors run only with --stack processes"
    );
    let mut t = match args.stack {
        StackMode::InProcess => {
            in_process(http, &tokens, layout.clone(), args, nats.clone()).await?
        }
        StackMode::Processes => processes(http, &tokens, &layout, args, nats.as_deref(), extra)?,
    };
    t.layout = Some(layout);
    if let Some(url) = &nats {
        t.nats = Some(crate::choreo::connect(url).await?);
    }
    Ok(t)
}

async fn in_process(
    http: Clients,
    tokens: &Tokens,
    layout: Layout,
    args: &BenchArgs,
    nats: Option<String>,
) -> anyhow::Result<Target> {
    let mut cfg = StackConfig::new(layout, 0);
    cfg.tokens = Some(tokens.clone());
    cfg.nats_url = nats;
    cfg.service_pool_size = args.service_pool;
    let pool = args.orchestrator_pool;
    cfg.orchestrator = Box::new(move |c| c.db_pool_size = pool);
    let s = Stack::start(cfg).await?;
    let urls = [
        s.orchestrator_url.clone(),
        s.inventory_url.clone(),
        s.payment_url.clone(),
        s.shipping_url.clone(),
    ];
    let mut t = Target::new(http, urls);
    if let Some(orders) = &s.orders_url {
        t.urls.insert(ORDERS.to_string(), orders.clone());
    }
    t.in_process = Some(s);
    Ok(t)
}

/// The component name of the `k`-th acceptor (and its database's suffix).
pub fn acceptor(k: u8) -> String {
    format!("acceptor_{k}")
}

fn processes(
    http: Clients,
    tokens: &Tokens,
    layout: &Layout,
    args: &BenchArgs,
    nats: Option<&str>,
    extra: &[(String, String)],
) -> anyhow::Result<Target> {
    let ports = [
        crate::launch::free_port()?,
        crate::launch::free_port()?,
        crate::launch::free_port()?,
        crate::launch::free_port()?,
    ];
    let urls = ports.map(crate::launch::loopback_url);
    let services: [String; 3] = [urls[1].clone(), urls[2].clone(), urls[3].clone()];
    let mut acceptors = Vec::new();
    for k in 0..args.acceptors {
        acceptors.push((acceptor(k), crate::launch::free_port()?));
    }
    let mut orchestrator = crate::launch::orchestrator_env(
        layout,
        ports[0],
        &services,
        "bench",
        args.orchestrator_pool,
    );
    if !acceptors.is_empty() {
        let list: Vec<String> = acceptors
            .iter()
            .map(|(_, p)| crate::launch::loopback_url(*p))
            .collect();
        orchestrator.push(("ACCEPTOR_URLS".into(), list.join(",")));
    }
    let mut envs = vec![orchestrator];
    for (i, s) in (1..).zip(SERVICES) {
        envs.push(match nats {
            Some(nats) => {
                crate::launch::choreo_service_env(layout, s, ports[i], args.service_pool, nats)
            }
            None => crate::launch::service_env(layout, s, ports[i], args.service_pool),
        });
    }
    let mut t = Target::new(http, urls);
    let mut components: Vec<(&str, Vec<(String, String)>)> =
        COMPONENTS.into_iter().zip(envs).collect();
    if let Some(nats) = nats {
        let port = crate::launch::free_port()?;
        let env = crate::launch::orders_env(layout, port, args.service_pool, nats, 10_000);
        components.push((ORDERS, env));
        t.urls
            .insert(ORDERS.to_string(), crate::launch::loopback_url(port));
    }
    for (c, mut env) in components {
        env.extend(tokens.env());
        env.extend_from_slice(extra);
        let bin = crate::launch::binary(args.bin_dir.as_deref(), c)?;
        t._children.push(Proc::spawn(&bin, &env, &Output::Stderr)?);
    }
    if acceptors.is_empty() {
        return Ok(t);
    }
    let bin = crate::launch::binary(args.bin_dir.as_deref(), "acceptor")?;
    for (name, port) in acceptors {
        let mut env = crate::launch::acceptor_env(layout, &name, port);
        env.extend(tokens.env());
        env.extend_from_slice(extra);
        t._children.push(Proc::spawn(&bin, &env, &Output::Stderr)?);
        t.urls.insert(name, crate::launch::loopback_url(port));
    }
    Ok(t)
}

/// Wait until every component answers `GET /healthz` (at most a minute).
pub async fn wait_healthy(t: &Target) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in t.components() {
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
