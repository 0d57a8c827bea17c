//! A whole store — N shards and the coordinator — in one process: for `tandem kv up` and for
//! tests (each process on its own listener; every redb file under one directory).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Error};

/// A running in-process store.
pub struct Local {
    pub shard_urls: Vec<String>,
    pub coordinator_url: String,
    pub dir: PathBuf,
    running: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Local {
    /// Start `shards` shards and a coordinator on the given addresses (`port 0`: ephemeral)
    /// with data under `dir`; `tweak` adjusts each config before it is built.
    pub async fn start(
        shards: usize,
        dir: &Path,
        addrs: Option<(SocketAddr, Vec<SocketAddr>)>,
        tweak: impl Fn(Config) -> Config,
    ) -> Result<Local, Error> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (coord_addr, shard_addrs) = addrs.unwrap_or((any, vec![any; shards]));
        let coord_listener = tandem_kit::http::bind(coord_addr).await?;
        let mut listeners = Vec::new();
        for a in shard_addrs.iter().take(shards) {
            listeners.push(tandem_kit::http::bind(*a).await?);
        }
        let url = |l: &tokio::net::TcpListener| -> Result<String, Error> {
            Ok(format!("http://{}", l.local_addr()?))
        };
        let shard_urls = listeners.iter().map(url).collect::<Result<Vec<_>, _>>()?;
        let coordinator_url = url(&coord_listener)?;
        let mut local = Local {
            shard_urls: shard_urls.clone(),
            coordinator_url: coordinator_url.clone(),
            dir: dir.to_path_buf(),
            running: Vec::new(),
        };
        let coordinator = tweak(Config::coordinator(
            shard_urls.clone(),
            dir.join("coordinator"),
        ));
        local.spawn(coordinator, coord_listener).await?;
        for (i, listener) in listeners.into_iter().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            let config = tweak(Config::shard(
                index,
                shard_urls.clone(),
                coordinator_url.clone(),
                dir.join(format!("shard-{i}")),
            ));
            local.spawn(config, listener).await?;
        }
        Ok(local)
    }

    async fn spawn(
        &mut self,
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> Result<(), Error> {
        let app = crate::build(config).await?;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = app.run(listener, shutdown).await {
                tracing::error!(error = %e, "kv process failed");
            }
        });
        self.running.push((tx, handle));
        Ok(())
    }

    /// Stop every process and wait until they are gone.
    pub async fn stop(self) {
        for (tx, handle) in self.running {
            let _ = tx.send(());
            let _ = handle.await;
        }
    }
}
