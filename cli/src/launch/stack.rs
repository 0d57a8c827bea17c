//! The whole checkout stack in one process: the three services and the orchestrator, each with
//! its own database on one Postgres server (see [`Layout`]; created if missing) and its own
//! port; with NATS ([`StackConfig::nats_url`]), the choreographed checkout too: each service's
//! outbox relay and durable consumer, and the orders entry point (orchestrator port + 7).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Layout, NATS_HINT, ORDERS, SERVICES, Tokens};

/// Where and how to start the stack.
pub struct StackConfig {
    pub layout: Layout,
    /// Orchestrator port; the services use the next three. 0: ephemeral ports.
    pub base_port: u16,
    /// Adjust the orchestrator's configuration (lease TTL, definitions …).
    pub orchestrator: Box<dyn FnOnce(&mut orchestrator::Config) + Send>,
    /// Pool size of each service (the orchestrator's is in its config).
    pub service_pool_size: u32,
    /// NATS with JetStream: when given, the choreographed checkout runs too (the services'
    /// relays and consumers, and the orders service). Unreachable: `start` fails saying so.
    pub nats_url: Option<String>,
    /// The orders service's step timeout (its `STEP_TIMEOUT_MS`).
    pub step_timeout_ms: u64,
    /// The stack's own tokens (one per role, see docs/security.md): every server accepts them
    /// and sends the service token; [`crate::client::Client::for_stack`] sends the operator's.
    /// Default: freshly generated. `None`: the servers take [`StackConfig::auth`] instead.
    pub tokens: Option<Tokens>,
    /// Token settings when [`StackConfig::tokens`] is `None` (`tandem up` with the user's
    /// `TANDEM_TOKENS`); left at its default, the stack runs open on loopback.
    pub auth: tandem_kit::auth::AuthConfig,
}

impl StackConfig {
    pub fn new(layout: Layout, base_port: u16) -> Self {
        StackConfig {
            layout,
            base_port,
            orchestrator: Box::new(|_| {}),
            service_pool_size: 5,
            nats_url: None,
            step_timeout_ms: 10_000,
            tokens: Some(Tokens::generate()),
            auth: tandem_kit::auth::AuthConfig::default(),
        }
    }

    /// No tokens of the stack's own: the servers take `auth` (the default [`AuthConfig`]:
    /// open, on loopback).
    ///
    /// [`AuthConfig`]: tandem_kit::auth::AuthConfig
    pub fn with_auth(mut self, auth: tandem_kit::auth::AuthConfig) -> Self {
        self.tokens = None;
        self.auth = auth;
        self
    }

    /// The settings every server of the stack gets.
    fn server_auth(&self) -> tandem_kit::auth::AuthConfig {
        match &self.tokens {
            Some(t) => t.auth_config(),
            None => self.auth.clone(),
        }
    }
}

pub struct Stack {
    pub orchestrator_url: String,
    pub inventory_url: String,
    pub payment_url: String,
    pub shipping_url: String,
    /// The choreographed checkout's entry point, when the stack runs with NATS.
    pub orders_url: Option<String>,
    pub layout: Layout,
    /// The stack's own tokens, if it was started with them ([`StackConfig::tokens`]).
    pub tokens: Option<Tokens>,
    /// The services' relays and consumers (stopped on drop).
    _choreo: Vec<tandem_kit::choreo::step::Worker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base + offset }
}

async fn bind(port: u16) -> anyhow::Result<(TcpListener, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let l = tandem_kit::http::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (is another stack running?)"))?;
    let url = format!("http://{}", l.local_addr()?);
    Ok((l, url))
}

fn spec(service: &str) -> &'static tandem_kit::service::Spec {
    match service {
        "inventory" => &inventory::SPEC,
        "payment" => &payment::SPEC,
        _ => &shipping::SPEC,
    }
}

/// The service's step of the choreographed checkout.
fn step(service: &str) -> &'static tandem_kit::choreo::step::Step {
    match service {
        "inventory" => &inventory::choreo::STEP,
        "payment" => &payment::choreo::STEP,
        _ => &shipping::choreo::STEP,
    }
}

/// Port offset of the orders service from the orchestrator's (8080 → 8087).
pub const ORDERS_OFFSET: u16 = 7;

impl Stack {
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Stack> {
        let auth = cfg.server_auth();
        let layout = cfg.layout;
        let (shutdown, rx) = watch::channel(false);
        let stop = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
        let mut urls = Vec::new();
        let js = match &cfg.nats_url {
            Some(url) => Some(
                tandem_kit::choreo::connect(url)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}\n{}", NATS_HINT))?,
            ),
            None => None,
        };
        let mut choreo = Vec::new();
        for (i, service) in (1..).zip(SERVICES) {
            let (l, url) = bind(port(cfg.base_port, i)).await?;
            let mut c = tandem_kit::service::Config::with_database(layout.database_url(service))
                .with_auth(auth.clone());
            c.db_pool_size = cfg.service_pool_size;
            // The demo, the tests and `tandem up` use the `/faults` endpoints.
            c.fault_injection = tandem_kit::faults::Switch::On;
            let app = tandem_kit::service::build(spec(service), c).await?;
            if let Some(js) = &js {
                choreo.push(tandem_kit::choreo::step::Worker::start(
                    app.clone(),
                    step(service),
                    js.clone(),
                ));
            }
            let run = app.run(l, stop());
            tasks.push(tokio::spawn(async move { Ok(run.await?) }));
            urls.push(url);
        }
        let [inventory_url, payment_url, shipping_url]: [String; 3] =
            urls.try_into().expect("three services");

        let (l, orchestrator_url) = bind(cfg.base_port).await?;
        let mut oc = orchestrator::Config::new(
            layout.database_url("orchestrator"),
            &inventory_url,
            &payment_url,
            &shipping_url,
        );
        oc.listen_addr = l.local_addr()?;
        oc.auth = auth.clone();
        oc.fault_injection = tandem_kit::faults::Switch::On;
        (cfg.orchestrator)(&mut oc);
        let app = orchestrator::build(oc).await?;
        let run = app.run(l, stop());
        tasks.push(tokio::spawn(async move { Ok(run.await?) }));

        let mut orders_url = None;
        if let Some(nats) = &cfg.nats_url {
            let (l, url) = bind(port(cfg.base_port, ORDERS_OFFSET)).await?;
            let mut c = orders::Config::with(layout.database_url(ORDERS), nats.clone());
            c.listen_addr = l.local_addr()?;
            c.db_pool_size = cfg.service_pool_size;
            c.step_timeout_ms = cfg.step_timeout_ms;
            c.auth = auth.clone();
            let run = orders::build(c).await?.run(l, stop());
            tasks.push(tokio::spawn(async move { Ok(run.await?) }));
            orders_url = Some(url);
        }

        Ok(Stack {
            orchestrator_url,
            inventory_url,
            payment_url,
            shipping_url,
            orders_url,
            layout,
            tokens: cfg.tokens,
            _choreo: choreo,
            shutdown,
            tasks,
        })
    }

    /// Graceful stop: every server drains, the orchestrator hands its leases back.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.await??;
        }
        Ok(())
    }

    /// Resolves when any component stops on its own (an error), with that error.
    pub async fn wait_for_failure(&mut self) -> anyhow::Error {
        let (r, _, _) = futures::future::select_all(self.tasks.iter_mut()).await;
        match r {
            Ok(Ok(())) => anyhow::anyhow!("a component stopped"),
            Ok(Err(e)) => e,
            Err(e) => e.into(),
        }
    }
}
