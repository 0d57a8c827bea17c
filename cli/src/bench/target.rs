//! The stack under test: a running one (`--orchestrator-url`), or the bench's own, started by
//! the launcher ([`crate::launch`]) as the real binaries or in this process, on freshly
//! recreated databases `<prefix>_<component>`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::{BenchArgs, StackMode};
use crate::launch::procs::{Output, Proc};
use crate::launch::stack::{Stack, StackConfig};
use crate::launch::{COMPONENTS, Layout, SERVICES};

pub struct Target {
    pub http: reqwest::Client,
    urls: BTreeMap<&'static str, String>,
    _children: Vec<Proc>,
    pub in_process: Option<Stack>,
}

impl Target {
    /// The URL of a component (`orchestrator`, `inventory`, …).
    pub fn url(&self, component: &str) -> &str {
        &self.urls[component]
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

    fn new(http: reqwest::Client, urls: [String; 4]) -> Self {
        Target {
            http,
            urls: COMPONENTS.into_iter().zip(urls).collect(),
            _children: vec![],
            in_process: None,
        }
    }
}

pub async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
    let http = reqwest::Client::builder()
        // Against a running stack with tokens: $TANDEM_TOKEN (its own stacks run open).
        .default_headers(crate::client::token_headers())
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(60))
        .build()?;
    if let Some(urls) = args.running.urls()? {
        return Ok(Target::new(http, urls));
    }
    let layout = Layout::new(&args.database_url, &args.db_prefix);
    layout.drop_databases().await?;
    match args.stack {
        StackMode::InProcess => in_process(http, layout, args).await,
        StackMode::Processes => processes(http, &layout, args),
    }
}

async fn in_process(
    http: reqwest::Client,
    layout: Layout,
    args: &BenchArgs,
) -> anyhow::Result<Target> {
    let mut cfg = StackConfig::new(layout, 0);
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
    t.in_process = Some(s);
    Ok(t)
}

fn processes(http: reqwest::Client, layout: &Layout, args: &BenchArgs) -> anyhow::Result<Target> {
    let ports = [
        crate::launch::free_port()?,
        crate::launch::free_port()?,
        crate::launch::free_port()?,
        crate::launch::free_port()?,
    ];
    let urls = ports.map(crate::launch::loopback_url);
    let services: [String; 3] = [urls[1].clone(), urls[2].clone(), urls[3].clone()];
    let mut envs = vec![crate::launch::orchestrator_env(
        layout,
        ports[0],
        &services,
        "bench",
        args.orchestrator_pool,
    )];
    for (i, s) in (1..).zip(SERVICES) {
        envs.push(crate::launch::service_env(
            layout,
            s,
            ports[i],
            args.service_pool,
        ));
    }
    let mut t = Target::new(http, urls);
    for (c, env) in COMPONENTS.into_iter().zip(envs) {
        let bin = crate::launch::binary(args.bin_dir.as_deref(), c)?;
        t._children.push(Proc::spawn(&bin, &env, &Output::Stderr)?);
    }
    Ok(t)
}

/// Wait until every component answers `GET /healthz` (at most a minute).
pub async fn wait_healthy(t: &Target) -> anyhow::Result<()> {
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
