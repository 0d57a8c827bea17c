//! A private `nats-server -js` for tests: a free port on 127.0.0.1, a fresh store directory,
//! killed (and its store removed) on drop, so parallel tests never share streams.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian installs the server; `NATS_SERVER` overrides it.
pub const DEFAULT_BINARY: &str = "/usr/sbin/nats-server";

/// A running private server.
#[derive(Debug)]
pub struct PrivateNats {
    pub url: String,
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

fn binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| DEFAULT_BINARY.to_string())
}

impl PrivateNats {
    /// Start one, or `None` (after [`crate::testing::missing_prerequisite`]) when the server
    /// binary is missing.
    pub async fn start() -> Option<PrivateNats> {
        if !std::path::Path::new(&binary()).exists() && std::env::var_os("NATS_SERVER").is_none() {
            crate::testing::missing_prerequisite(
                "nats-server",
                "apt-get install nats-server (or set NATS_SERVER)",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!("tandem-nats-{}", uuid::Uuid::now_v7()));
        let mut nats = PrivateNats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            child: None,
        };
        nats.spawn().await;
        Some(nats)
    }

    async fn spawn(&mut self) {
        let child = Command::new(binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        for _ in 0..100 {
            if async_nats::connect(&self.url).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nats-server on {} did not come up", self.url);
    }

    /// Kill the server (SIGKILL) and start it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
