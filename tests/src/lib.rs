//! Harness for Tandem's cross-component tests (`tests/tests/*.rs`).
//!
//! - [`in_process`]: the whole stack in this process on ephemeral ports, with fresh databases.
//! - [`procs`]: the real binaries as child processes (for `kill -9`), built on demand.

use std::time::Duration;

use tandem_cli::client::Client;
use tandem_cli::stack::{Stack, StackConfig};

/// A fresh stack: new databases `tandem_t_<name>_<random>_*`, ephemeral ports, small pools.
pub async fn in_process(
    name: &str,
    tweak: impl FnOnce(&mut orchestrator::Config) + Send + 'static,
) -> (Stack, Client) {
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("tandem_t_{name}_{}", &suffix[suffix.len() - 10..]);
    let mut cfg = StackConfig::new(tandem_kit::testing::server_url(), prefix, 0);
    cfg.service_pool_size = 3;
    cfg.orchestrator = Box::new(move |c| {
        c.db_pool_size = 6;
        c.poll_interval_ms = 100;
        tweak(c);
    });
    let stack = Stack::start(cfg)
        .await
        .expect("the stack starts (is Postgres up? see README)");
    let client = Client::for_stack(&stack);
    (stack, client)
}

/// Poll `f` until it returns Some, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod procs {
    //! Real binaries as child processes.

    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;

    /// Build the four binaries once per test process (a no-op when they are fresh) and return
    /// the directory holding them.
    pub fn bin_dir() -> PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&root)
                .args([
                    "build",
                    "--bin",
                    "orchestrator",
                    "--bin",
                    "inventory",
                    "--bin",
                    "payment",
                    "--bin",
                    "shipping",
                ])
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building the binaries failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"));
            target.join("debug")
        })
        .clone()
    }

    /// A child process killed on drop.
    pub struct Proc {
        pub name: String,
        child: Child,
    }

    impl Proc {
        pub fn spawn(bin: &str, env: &[(&str, String)]) -> Proc {
            let mut cmd = Command::new(bin_dir().join(bin));
            cmd.stdin(Stdio::null());
            if std::env::var("TANDEM_TEST_LOGS").is_err() {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
            Proc {
                name: bin.to_string(),
                child,
            }
        }

        /// SIGKILL, and reap.
        pub fn kill9(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            self.kill9();
        }
    }

    /// A free loopback port (bound then released).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}
