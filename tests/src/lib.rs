//! Harness for Tandem's cross-component tests (`tests/tests/*.rs`), on the CLI's launcher
//! (`tandem_cli::launch`):
//!
//! - [`in_process`]: the whole stack in this process on ephemeral ports, with fresh databases.
//! - [`procs`]: the real binaries, built on demand, as child processes (for `kill -9`).
//! - [`cluster`]: the real binaries as a stack (n orchestrators + 3 services, optionally the
//!   Paxos Commit acceptors) that tests can kill,
//!   pause and restart, with fresh databases and the services' tables at hand for audits.
//! - [`pgcluster`]: a throwaway Postgres cluster of the test's own (for restarting Postgres).
//! - [`faults`]: any node's `/faults` API (install, count firings, heal).
//!
//! Every database a test makes is dropped when the test passes and kept, named in the failure
//! output, when it fails (`tandem_kit::testing::TestDatabases`).

use std::time::Duration;

pub mod cluster;
pub mod faults;
pub mod pgcluster;

use tandem_cli::client::Client;
use tandem_cli::launch::stack::{Stack, StackConfig};
use tandem_cli::launch::{Layout, Tokens};
use tandem_kit::auth::Role;
use tandem_kit::testing::TestDatabases;

/// An in-process stack and the databases it owns for the test.
pub struct TestStack {
    pub stack: Stack,
    pub databases: TestDatabases,
}

impl TestStack {
    /// Stop the stack gracefully; its databases are then dropped (kept if the stop fails).
    pub async fn stop(self) -> anyhow::Result<()> {
        let TestStack { stack, databases } = self;
        let r = stack.stop().await;
        if r.is_err() {
            databases.keep("the stack did not stop cleanly");
        }
        r
    }
}

impl std::ops::Deref for TestStack {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl TestStack {
    /// The stack's tokens (every [`in_process`] stack has its own; none for
    /// [`in_process_with_auth`]).
    pub fn tokens(&self) -> &Tokens {
        self.stack
            .tokens
            .as_ref()
            .expect("a stack with tokens of its own (in_process)")
    }

    /// A plain HTTP client sending the stack's token of `role` (none on a stack without
    /// tokens of its own).
    pub fn http(&self, role: Role) -> reqwest::Client {
        http_as(self.stack.tokens.as_ref().map(|t| t.get(role)))
    }

    /// A plain HTTP client as an operator (audits, faults, stock, definitions).
    pub fn operator(&self) -> reqwest::Client {
        self.http(Role::Operator)
    }
}

/// `Authorization: Bearer <token>` (none: no header).
pub fn http_headers(token: Option<&str>) -> reqwest::header::HeaderMap {
    tandem_cli::client::bearer_headers(token)
}

/// A plain HTTP client sending `token` as its bearer token (none: no header).
pub fn http_as(token: Option<&str>) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(http_headers(token))
        .build()
        .expect("an HTTP client")
}

/// A fresh stack: new databases `tandem_t_<name>_<random>_*`, ephemeral ports, small pools,
/// bearer tokens of its own on every server (one per role, [`TestStack::tokens`]); the client
/// sends the operator's.
pub async fn in_process(
    name: &str,
    tweak: impl FnOnce(&mut orchestrator::Config) + Send + 'static,
) -> (TestStack, Client) {
    start_stack(name, None, tweak).await
}

/// [`in_process`] with `auth` instead of tokens of its own (the default [`AuthConfig`]: open,
/// for the tests of open mode); the client sends none (give it one with `Client::with_token`).
///
/// [`AuthConfig`]: tandem_kit::auth::AuthConfig
pub async fn in_process_with_auth(
    name: &str,
    auth: tandem_kit::auth::AuthConfig,
    tweak: impl FnOnce(&mut orchestrator::Config) + Send + 'static,
) -> (TestStack, Client) {
    start_stack(name, Some(auth), tweak).await
}

async fn start_stack(
    name: &str,
    auth: Option<tandem_kit::auth::AuthConfig>,
    tweak: impl FnOnce(&mut orchestrator::Config) + Send + 'static,
) -> (TestStack, Client) {
    let layout = Layout::new(
        tandem_kit::testing::server_url(),
        tandem_kit::testing::unique_prefix(name),
    );
    let databases = TestDatabases::new(&layout.server_url, layout.databases());
    let mut cfg = StackConfig::new(layout, 0);
    cfg.service_pool_size = 3;
    if let Some(auth) = auth {
        cfg = cfg.with_auth(auth);
    }
    cfg.orchestrator = Box::new(move |c| {
        c.db_pool_size = 6;
        c.poll_interval_ms = 100;
        tweak(c);
    });
    let stack = Stack::start(cfg)
        .await
        .expect("the stack starts (is Postgres up? see README)");
    let client = Client::for_stack(&stack);
    (TestStack { stack, databases }, client)
}

/// A randomized run's setting: the environment variable `name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A randomized run's card: declined (`tok_decline`) one time in five, else `tok_visa`.
pub fn random_card(rng: &mut impl rand::Rng) -> &'static str {
    if rng.random_bool(0.2) {
        "tok_decline"
    } else {
        "tok_visa"
    }
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
/// A scripted demo (`tandem_cli::paxos_demo`, `tandem_cli::three_pc_demo`) run as a test: its
/// options on fresh databases named by `databases` (dropped with the returned guard when the
/// test passes) and the real binaries, with the processes' logs in `<tmp>/tandem-tests/<prefix>/`.
pub fn demo_options(
    name: &str,
    databases: fn(&Layout) -> Vec<String>,
) -> (
    tandem_cli::paxos_demo::Options,
    TestDatabases,
    std::path::PathBuf,
) {
    let server = tandem_kit::testing::server_url();
    let layout = Layout::new(server.clone(), tandem_kit::testing::unique_prefix(name));
    let guard = TestDatabases::new(server, databases(&layout));
    let log_dir = std::env::temp_dir()
        .join("tandem-tests")
        .join(&layout.db_prefix);
    std::fs::create_dir_all(&log_dir).unwrap();
    let opts = tandem_cli::paxos_demo::Options {
        layout,
        bin_dir: procs::bin_dir(),
        log_dir: Some(log_dir.clone()),
        verbose: true,
    };
    (opts, guard, log_dir)
}

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
    //! The workspace's binaries, built on demand, spawned through the launcher.

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    pub use tandem_cli::launch::procs::{Output, Proc};

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

    /// Spawn binary `bin` of the workspace with `env`, its output appended to `log` (when given;
    /// with `TANDEM_TEST_LOGS` set it goes to this process's instead).
    pub fn spawn(bin: &str, env: &[(String, String)], log: Option<&Path>) -> Proc {
        let output = match log {
            _ if std::env::var("TANDEM_TEST_LOGS").is_ok() => Output::Inherit,
            Some(path) => Output::Append(path.to_path_buf()),
            None => Output::Discard,
        };
        Proc::spawn(&bin_dir().join(bin), env, &output)
            .unwrap_or_else(|e| panic!("spawning {bin}: {e:#}"))
    }

    /// A free loopback port.
    pub fn free_port() -> u16 {
        tandem_cli::launch::free_port().expect("a free loopback port")
    }
}

/// Start a checkout with `input` whose call to `service` is slow once for its order
/// (`latency_ms`; `op`: `action`, `compensation` or `any`); the saga id.
pub async fn slow_checkout(
    c: &Client,
    (service, op, latency_ms): (&str, &str, u64),
    input: &serde_json::Value,
) -> String {
    let fault = serde_json::json!({
        "order_id": input["order_id"], "op": op, "kind": "latency", "latency_ms": latency_ms
    });
    c.add_fault(service, &fault).await.unwrap();
    start(c, "checkout", input).await
}

/// `POST /sagas` for `definition` with `input`, which must be accepted (201); the saga id.
pub async fn start(c: &Client, definition: &str, input: &serde_json::Value) -> String {
    let r = c.start_saga(definition, input, None).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

/// `POST /definitions` of `def` to the orchestrator: its answer (201 when stored).
pub async fn post_definition(c: &Client, def: &serde_json::Value) -> tandem_cli::client::Reply {
    let url = format!("{}/definitions", c.orchestrator);
    c.send_json(reqwest::Method::POST, &url, def).await.unwrap()
}

/// `n` checkouts `{prefix}-{i}` of one `sku` each, posted concurrently; their saga ids.
pub async fn start_checkouts(c: &Client, prefix: &str, sku: &str, n: usize) -> Vec<String> {
    let posts = (0..n).map(|i| {
        let input =
            tandem_cli::client::checkout_input(&format!("{prefix}-{i}"), sku, 1, "tok_visa", "GB");
        async move { start(c, "checkout", &input).await }
    });
    futures::future::join_all(posts).await
}

/// Wait (at most 30 s) until saga `id` has an event `kind` of `step`; the saga then.
pub async fn saga_reaches(c: &Client, id: &str, kind: &str, step: &str) -> serde_json::Value {
    eventually(
        Duration::from_secs(30),
        &format!("{kind} {step} of saga {id}"),
        || async move {
            let s = c.wait_saga(id, 0).await.ok()?;
            tandem_cli::demo::event_index(&s, kind, Some(step)).map(|_| s)
        },
    )
    .await
}

/// A second orchestrator instance (identity `instance`) on `stack`'s database and services,
/// in this process on an ephemeral port: another owner for the same sagas.
pub struct OtherOrchestrator {
    pub url: String,
    pub client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<orchestrator::error::Result<()>>,
}

impl OtherOrchestrator {
    pub async fn start(stack: &Stack, instance: &str) -> OtherOrchestrator {
        let mut c = orchestrator::Config::new(
            stack.layout.database_url("orchestrator"),
            &stack.inventory_url,
            &stack.payment_url,
            &stack.shipping_url,
        );
        c.db_pool_size = 4;
        c.poll_interval_ms = 100;
        c.instance_id = Some(instance.to_string());
        if let Some(t) = &stack.tokens {
            c.auth = t.auth_config();
        }
        let listener = tandem_kit::http::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("a free port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        c.listen_addr = listener.local_addr().expect("bound");
        let app = orchestrator::build(c)
            .await
            .expect("the orchestrator builds");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run(listener, async move {
            let _ = stopped.await;
        }));
        let client = Client::new(
            &url,
            &stack.inventory_url,
            &stack.payment_url,
            &stack.shipping_url,
        );
        let client = match &stack.tokens {
            Some(t) => client.with_token(&t.operator),
            None => client,
        };
        OtherOrchestrator {
            url,
            client,
            stop,
            task,
        }
    }

    /// Graceful stop (its leases handed back).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("joins").expect("stops cleanly");
    }
}
