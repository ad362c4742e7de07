//! Worker processes for tests that kill and restart them: the built binaries of the
//! workspace, started as children in a namespace, stopped with SIGTERM or SIGKILL.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The directory holding the workspace's binaries next to this test executable
/// (`target/<profile>/`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// A running worker binary.
pub struct Worker {
    pub binary: String,
    args: Vec<String>,
    child: Child,
}

impl Worker {
    /// Starts `binary` (e.g. `fetcher-worker`) with `--namespace` and `args`.
    pub fn start(binary: &str, namespace: &str, args: &[&str]) -> anyhow::Result<Worker> {
        let args: Vec<String> = ["--namespace", namespace]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        let child = spawn(binary, &args)?;
        Ok(Worker {
            binary: binary.to_string(),
            args,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then start the same command again.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn(&self.binary, &self.args)?;
        Ok(())
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        signal(self.child.id(), "TERM")?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                self.child.kill()?;
                anyhow::bail!("{} did not exit within {limit:?} of SIGTERM", self.binary);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// SIGTERM to every worker; each must exit, and exit 0, within `limit`.
pub fn stop_all(workers: impl IntoIterator<Item = Worker>, limit: Duration) {
    for worker in workers {
        let name = worker.binary.clone();
        let exit = worker
            .terminate(limit)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(exit.success(), "{name} exited with {exit} after SIGTERM");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(binary: &str, args: &[String]) -> anyhow::Result<Child> {
    let path = bin_dir()?.join(binary);
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn,lapin=off,redis=error")
        .spawn()
        .with_context(|| format!("cannot start {}", path.display()))
}

/// Sends a signal by name (`TERM`, `KILL`) with the system's `kill`.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}
