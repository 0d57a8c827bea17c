//! The real binaries as child processes: spawned with an environment from the launcher,
//! killed (`SIGKILL`) and reaped on drop.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::Context;

/// Where a child's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    /// Both discarded.
    Discard,
    /// stdout discarded, stderr shared with this process (the bench: errors stay visible).
    Stderr,
    /// Both shared with this process.
    Inherit,
    /// Both appended to a file.
    Append(PathBuf),
}

/// A child process killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Start `program` with `env` added to this process's environment (minus `RUST_LOG`
    /// unless given: a child logs at its own default level).
    pub fn spawn(
        program: &Path,
        env: &[(String, String)],
        output: &Output,
    ) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null()).env_remove("RUST_LOG");
        match output {
            Output::Discard => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            Output::Stderr => {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            }
            Output::Inherit => {}
            Output::Append(path) => {
                let f = File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            name: program
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            child,
            exit: None,
        })
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.exit.get_or_insert(s);
        }
    }

    /// Send a signal by name (`STOP`, `CONT`, `TERM` …) with kill(1).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -{sig} {} failed", self.pid());
        Ok(())
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
