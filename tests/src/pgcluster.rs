//! A throwaway Postgres cluster of the test's own: `initdb` into a temporary directory owned by
//! `postgres`, a private port, `pg_ctl` (run as `postgres` through `runuser` when the test runs
//! as root — `initdb` and `pg_ctl` refuse root). Tests that restart Postgres use this, never the
//! shared server. Stopped (`-m immediate`) and deleted on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::procs::free_port;

pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_root: bool,
}

impl PgCluster {
    /// The newest `/usr/lib/postgresql/*/bin` holding `initdb` and `pg_ctl`, if any.
    pub fn server_binaries() -> Option<PathBuf> {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, b)| b)
    }

    /// Report the missing server binaries ([`tandem_kit::testing::missing_prerequisite`]: the
    /// test skips outside CI, fails in CI).
    pub fn missing() {
        tandem_kit::testing::missing_prerequisite(
            "the PostgreSQL server binaries initdb and pg_ctl under /usr/lib/postgresql/*/bin",
            "install the server package, e.g. apt-get install postgresql",
        );
    }

    /// `initdb` a new cluster and start it. Returns None when the server binaries are missing.
    pub fn create() -> Option<PgCluster> {
        let bin = Self::server_binaries()?;
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = std::env::temp_dir().join(format!("tandem-pg-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("creating the cluster directory");
        let c = PgCluster {
            bin,
            dir,
            port: free_port(),
            as_root,
        };
        if as_root {
            c.run(
                "chown",
                &["-R", "postgres:postgres", c.dir.to_str().unwrap()],
                false,
            );
        }
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            true,
        );
        c.start();
        Some(c)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// A command for a server tool (`initdb`, `pg_ctl`: run as `postgres` when this is root) or
    /// another program.
    fn command(&self, program: &str, server_tool: bool) -> (Command, String) {
        let program = if server_tool {
            self.bin.join(program).display().to_string()
        } else {
            program.to_string()
        };
        let cmd = if self.as_root && server_tool {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &program]);
            c
        } else {
            Command::new(&program)
        };
        (cmd, program)
    }

    fn run(&self, program: &str, args: &[&str], server_tool: bool) {
        let (mut cmd, program) = self.command(program, server_tool);
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the server and wait until it accepts connections.
    pub fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=60 -c fsync=off \
             -c max_prepared_transactions=64",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"],
            true,
        );
    }

    /// Stop the server (`fast`: disconnect every client, roll back open transactions).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
            true,
        );
    }

    /// A URL of this server (database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let (mut cmd, _) = self.command("pg_ctl", true);
        let _ = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
