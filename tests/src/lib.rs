//! Harness for Tandem's cross-component tests (`tests/tests/*.rs`).
//!
//! - [`in_process`]: the whole stack in this process on ephemeral ports, with fresh databases.
//! - [`procs`]: the real binaries as child processes (for `kill -9`), built on demand.
//! - [`cluster`]: the real binaries as a stack (n orchestrators + 3 services) that tests can kill,
//!   pause and restart, with fresh databases and the services' tables at hand for audits.
//! - [`pgcluster`]: a throwaway Postgres cluster of the test's own (for restarting Postgres).

use std::time::Duration;

pub mod cluster;
pub mod pgcluster;

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

/// The shipped checkout with a policy for chaos: 1 s call timeout (a slower answer is a
/// transient failure), quick retries, a short 425 deadline, and budgets large enough that the
/// kills never exhaust a compensation (nothing parks).
pub fn write_chaos_definition(dir: &std::path::Path, name: &str, deadline_ms: u64) {
    let mut def: serde_json::Value =
        serde_json::from_str(orchestrator::CHECKOUT_DEFINITION).unwrap();
    def["name"] = serde_json::json!(name);
    def["policy"] = serde_json::json!({
        "timeout_ms": 1000,
        "max_attempts": 12,
        "backoff": { "initial_ms": 50, "multiplier": 2.0, "max_ms": 1000, "jitter": 0.2 },
        "poll_interval_ms": 100,
        "deadline_ms": deadline_ms,
        "compensation_max_attempts": 10000,
        "max_retry_after_ms": 1000
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&def).unwrap(),
    )
    .unwrap();
}

pub mod procs {
    //! Real binaries as child processes.

    use std::fs::File;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::OnceLock;

    /// Build the workspace's binaries once per test process (a no-op when they are fresh), in the
    /// profile this code was built with (`--release` benchmarks spawn release binaries), and
    /// return the directory holding them.
    pub fn bin_dir() -> PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = !cfg!(debug_assertions);
            // Debug: `cargo test --workspace --no-run`, the very build `cargo test --workspace`
            // makes, so the binaries are already fresh and share its dependency features.
            // Cargo resolves features per invocation: `cargo build --bin orchestrator …` (or
            // even `--workspace --bins`) resolved them differently and rebuilt sqlx, reqwest and
            // everything above them (about a minute of CI). Every binary needed here belongs to
            // a package with integration tests, so `cargo test` builds it.
            // Release (benchmarks): the release build of the binaries.
            let args: &[&str] = if release {
                &["build", "--release", "--workspace", "--bins"]
            } else {
                &["test", "--workspace", "--no-run"]
            };
            let status = Command::new(cargo)
                .current_dir(&root)
                .args(args)
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building the binaries failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join("target"));
            target.join(if release { "release" } else { "debug" })
        })
        .clone()
    }

    /// A child process killed on drop.
    pub struct Proc {
        pub name: String,
        child: Child,
        exit: Option<ExitStatus>,
    }

    impl Proc {
        pub fn spawn(bin: &str, env: &[(&str, String)]) -> Proc {
            Self::spawn_logged(bin, env, None)
        }

        /// Spawn with stdout and stderr appended to `log` (when given; `TANDEM_TEST_LOGS`
        /// inherits them instead).
        pub fn spawn_logged(bin: &str, env: &[(&str, String)], log: Option<&Path>) -> Proc {
            let mut cmd = Command::new(bin_dir().join(bin));
            cmd.stdin(Stdio::null());
            if std::env::var("TANDEM_TEST_LOGS").is_err() {
                match log {
                    Some(path) => {
                        let f = File::options()
                            .create(true)
                            .append(true)
                            .open(path)
                            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                        cmd.stdout(f.try_clone().expect("log file")).stderr(f);
                    }
                    None => {
                        cmd.stdout(Stdio::null()).stderr(Stdio::null());
                    }
                }
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
                exit: None,
            }
        }

        /// SIGKILL, and reap.
        pub fn kill9(&mut self) {
            let _ = self.child.kill();
            if let Ok(s) = self.child.wait() {
                self.exit.get_or_insert(s);
            }
        }

        /// Send a signal by name (`STOP`, `CONT`, …) with kill(1).
        pub fn signal(&self, sig: &str) {
            let status = Command::new("kill")
                .args([format!("-{sig}"), self.pid().to_string()])
                .status()
                .expect("running kill");
            assert!(status.success(), "kill -{sig} {} failed", self.pid());
        }

        /// The exit status if the process has exited (reaped here).
        pub fn exited(&mut self) -> Option<ExitStatus> {
            if self.exit.is_none() {
                self.exit = self.child.try_wait().ok().flatten();
            }
            self.exit
        }

        /// Exited by `SIGABRT`: a crash point fired (see `tandem_kit::crash`).
        pub fn aborted(&mut self) -> bool {
            self.exited().and_then(|s| s.signal()) == Some(6)
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            self.kill9(); // SIGKILL ends a stopped (SIGSTOP) process too
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
