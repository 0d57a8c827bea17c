//! What the kv tests share: [`Api`], the shard API as the tests speak it (raw requests and
//! the transaction steps built on them, for in-process stores and real processes alike), and
//! [`Cluster`], a store of real `kv` processes (shards and the coordinator) for crash tests:
//! each process can be killed with SIGKILL and restarted on the same port and data directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::Client;
use serde_json::{Value, json};
use uuid::Uuid;

/// The shard API over processes numbered by the implementor: [`Api::post`] is the one request,
/// the rest are the steps of a transaction built on it.
pub trait Api {
    /// The base URL of process `p`.
    fn url(&self, p: usize) -> String;
    fn http(&self) -> &reqwest::Client;

    /// `POST {path}` to process `p`: the status and the JSON body (null if none).
    async fn post(&self, p: usize, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http()
            .post(format!("{}{path}", self.url(p)))
            .json(&body)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    async fn status(&self, p: usize) -> Value {
        self.http()
            .get(format!("{}/status", self.url(p)))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    /// Begin transaction `id` with wait-die `priority` on process `p`.
    async fn begin_as(&self, p: usize, id: Uuid, priority: u64) {
        let (s, b) = self
            .post(p, "/txns", json!({"id": id, "priority": priority}))
            .await;
        assert_eq!(s, 201, "{b}");
    }

    async fn read(&self, p: usize, t: Uuid, key: &str) -> (u16, Value) {
        self.post(p, &format!("/txns/{t}/read"), json!({"key": key}))
            .await
    }

    async fn write(&self, p: usize, t: Uuid, key: &str, value: &str) -> (u16, Value) {
        let body = json!({"key": key, "value": value});
        self.post(p, &format!("/txns/{t}/write"), body).await
    }

    /// Ask process `p` to commit `t` over the shards `participants`.
    async fn commit(&self, p: usize, t: Uuid, participants: &[u16]) -> (u16, Value) {
        let body = json!({ "participants": participants });
        self.post(p, &format!("/txns/{t}/commit"), body).await
    }

    /// Commit `t` and require `outcome` (`committed` or `aborted`).
    async fn commit_is(&self, p: usize, t: Uuid, participants: &[u16], outcome: &str) {
        let (s, b) = self.commit(p, t, participants).await;
        assert_eq!((s, b["outcome"].as_str()), (200, Some(outcome)), "{b}");
    }
}

/// The problem type of an RFC 9457 body without its `urn:tandem:problem:` prefix.
pub fn slug(b: &Value) -> &str {
    b["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:tandem:problem:")
}

/// Require an answer to be the problem `want_slug` with status `want`.
pub fn assert_problem((status, body): &(u16, Value), want: u16, want_slug: &str) {
    assert_eq!((*status, slug(body)), (want, want_slug), "{body}");
}

/// Require the committed value of `key` (read in a transaction of its own).
pub async fn assert_value(client: &Client, key: &str, want: Option<&str>) {
    assert_eq!(
        client.get(key).await.expect("read").as_deref(),
        want,
        "{key}"
    );
}

/// Process 0 is the coordinator, process `1 + i` shard `i`.
pub struct Cluster {
    pub dir: PathBuf,
    pub ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    extra_env: Vec<(String, String)>,
    http: reqwest::Client,
}

pub const COORDINATOR: usize = 0;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-kv-{name}-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A size from the environment, with a small default for CI.
pub fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Cluster {
    /// Start `shards` shards and (if `with_coordinator`) the coordinator; wait until they answer.
    pub async fn start(
        name: &str,
        shards: usize,
        with_coordinator: bool,
        env: &[(&str, &str)],
    ) -> Cluster {
        let mut c = Cluster {
            dir: tempdir(name),
            ports: (0..=shards).map(|_| free_port()).collect(),
            procs: (0..=shards).map(|_| None).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::new(),
        };
        for p in 1..=shards {
            c.spawn(p);
        }
        if with_coordinator {
            c.spawn(COORDINATOR);
        }
        for p in 0..=shards {
            if p != COORDINATOR || with_coordinator {
                c.wait_up(p).await;
            }
        }
        c
    }

    pub fn shard_urls(&self) -> Vec<String> {
        (1..self.ports.len()).map(|p| self.url(p)).collect()
    }

    pub fn client(&self) -> Client {
        Client::new(self.shard_urls())
    }

    pub fn spawn(&mut self, p: usize) {
        self.spawn_with(p, &[]);
    }

    /// Start process `p` with extra environment (a crash point, say).
    pub fn spawn_with(&mut self, p: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("proc-{p}.log")))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv"));
        cmd.env("KV_SHARDS", self.shard_urls().join(","))
            .env("KV_COORDINATOR_URL", self.url(COORDINATOR))
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.ports[p]))
            .env("RUST_LOG", "warn")
            .env("KV_RETRY_MS", "100")
            .env("KV_TXN_TIMEOUT_MS", "3000")
            .env("KV_COMMIT_WAIT_MS", "2000")
            .env("KV_VOTE_TIMEOUT_MS", "2000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if p == COORDINATOR {
            cmd.env("KV_ROLE", "coordinator")
                .env("KV_DATA_DIR", self.dir.join("coordinator"));
        } else {
            cmd.env("KV_ROLE", "shard")
                .env("KV_SHARD_INDEX", (p - 1).to_string())
                .env("KV_DATA_DIR", self.dir.join(format!("shard-{}", p - 1)));
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs[p] = Some(cmd.spawn().expect("spawn kv"));
    }

    /// SIGKILL process `p` and reap it.
    pub fn kill(&mut self, p: usize) {
        if let Some(mut child) = self.procs[p].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait until process `p` exits by itself (a crash point); true if it died of a signal.
    pub fn wait_exit(&mut self, p: usize) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let mut child = self.procs[p].take().expect("process running");
        child.wait().expect("wait").signal().is_some()
    }

    pub async fn restart(&mut self, p: usize) {
        self.kill(p);
        self.spawn(p);
        self.wait_up(p).await;
    }

    /// Poll `GET /healthz` until it answers (at most 20 s).
    pub async fn wait_up(&self, p: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/healthz", self.url(p));
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("kv process {p} did not come up; see {}", self.dir.display());
    }

    /// Wait until `f(status of p)` holds (at most 20 s).
    pub async fn wait_status(&self, p: usize, what: &str, f: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(p).await;
            if f(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Api for Cluster {
    fn url(&self, p: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[p])
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in 0..self.procs.len() {
            self.kill(p);
        }
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// A key that lives on `shard` of `shards`.
pub fn key_on(shard: u16, shards: u16, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| kv_client::wire::shard_for(k, shards) == shard)
        .expect("some key hashes there")
}
