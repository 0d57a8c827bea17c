//! The whole checkout stack in one process: the three services and the orchestrator, each with
//! its own database `<prefix>_<component>` on one Postgres server (created if missing).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where and how to start the stack.
pub struct StackConfig {
    /// Any database URL of the server to use (its database name is ignored).
    pub server_url: String,
    /// Databases are `<prefix>_orchestrator`, `<prefix>_inventory`, …
    pub db_prefix: String,
    /// Orchestrator port; the services use the next three. 0: ephemeral ports.
    pub base_port: u16,
    /// Adjust the orchestrator's configuration (lease TTL, definitions …).
    pub orchestrator: Box<dyn FnOnce(&mut orchestrator::Config) + Send>,
    /// Pool size of each service (the orchestrator's is in its config).
    pub service_pool_size: u32,
}

impl StackConfig {
    pub fn new(
        server_url: impl Into<String>,
        db_prefix: impl Into<String>,
        base_port: u16,
    ) -> Self {
        StackConfig {
            server_url: server_url.into(),
            db_prefix: db_prefix.into(),
            base_port,
            orchestrator: Box::new(|_| {}),
            service_pool_size: 5,
        }
    }
}

pub struct Stack {
    pub orchestrator_url: String,
    pub inventory_url: String,
    pub payment_url: String,
    pub shipping_url: String,
    /// Database URL per component, for inspection.
    pub database_urls: [(String, String); 4],
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

impl Stack {
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Stack> {
        let db = |c: &str| {
            tandem_kit::testing::with_database(&cfg.server_url, &format!("{}_{c}", cfg.db_prefix))
        };
        let (shutdown, rx) = watch::channel(false);
        let stop = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();

        let (l, inventory_url) = bind(port(cfg.base_port, 1)).await?;
        let mut c = inventory::Config::with_database(db("inventory"));
        c.db_pool_size = cfg.service_pool_size;
        let app = inventory::build(c).await?;
        tasks.push(tokio::spawn(app.run(l, stop())));

        let (l, payment_url) = bind(port(cfg.base_port, 2)).await?;
        let mut c = payment::Config::with_database(db("payment"));
        c.db_pool_size = cfg.service_pool_size;
        let app = payment::build(c).await?;
        tasks.push(tokio::spawn(app.run(l, stop())));

        let (l, shipping_url) = bind(port(cfg.base_port, 3)).await?;
        let mut c = shipping::Config::with_database(db("shipping"));
        c.db_pool_size = cfg.service_pool_size;
        let app = shipping::build(c).await?;
        tasks.push(tokio::spawn(app.run(l, stop())));

        let (l, orchestrator_url) = bind(cfg.base_port).await?;
        let mut oc = orchestrator::Config::new(
            db("orchestrator"),
            &inventory_url,
            &payment_url,
            &shipping_url,
        );
        oc.listen_addr = l.local_addr()?;
        (cfg.orchestrator)(&mut oc);
        let app = orchestrator::build(oc).await?;
        tasks.push(tokio::spawn(async move { Ok(app.run(l, stop()).await?) }));

        Ok(Stack {
            orchestrator_url,
            inventory_url,
            payment_url,
            shipping_url,
            database_urls: [
                ("orchestrator".into(), db("orchestrator")),
                ("inventory".into(), db("inventory")),
                ("payment".into(), db("payment")),
                ("shipping".into(), db("shipping")),
            ],
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
