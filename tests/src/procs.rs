//! Worker processes for tests that kill and restart them, and for the bench: the built
//! binaries of the workspace, started as children, stopped with SIGTERM or SIGKILL.

use std::path::{Path, PathBuf};
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

/// A counter or gauge of a worker process's `/metrics` on `port`: the sum of the lines
/// that start with `line_start` (0 when there is no such line yet).
pub async fn scrape(port: u16, line_start: &str) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Where a started binary's output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// stdout discarded, stderr to ours, `RUST_LOG` quiet (tests).
    Quiet,
    /// stdout and stderr appended to this file, `NO_COLOR=1`, `RUST_LOG` inherited (bench).
    Log(PathBuf),
}

/// A running worker binary.
pub struct Worker {
    pub binary: String,
    args: Vec<String>,
    output: Output,
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
        Worker::start_with(&bin_dir()?, binary, args, Output::Quiet)
    }

    /// [`Worker::start`] with `--metrics-listen` on a free local port; returns the worker
    /// and that port (for [`scrape`]).
    pub fn start_with_metrics(
        binary: &str,
        namespace: &str,
        args: &[&str],
    ) -> anyhow::Result<(Worker, u16)> {
        let port = crate::redis_node::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let args = [args, &["--metrics-listen", &listen]].concat();
        Ok((Worker::start(binary, namespace, &args)?, port))
    }

    /// Starts `dir/binary` with exactly `args`, its output going to `output`.
    pub fn start_with(
        dir: &Path,
        binary: &str,
        args: Vec<String>,
        output: Output,
    ) -> anyhow::Result<Worker> {
        let child = spawn(&dir.join(binary), &args, &output)?;
        Ok(Worker {
            binary: binary.to_string(),
            args,
            output,
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
        self.child = spawn(&bin_dir()?.join(&self.binary), &self.args, &self.output)?;
        Ok(())
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal_term()?;
        self.wait_exit(Instant::now() + limit)
    }

    /// Sends SIGTERM (stop gracefully) without waiting.
    pub fn signal_term(&self) -> anyhow::Result<()> {
        signal(self.child.id(), "TERM")
    }

    /// Waits for the exit status until `deadline`; past it, SIGKILL and an error.
    pub fn wait_exit(&mut self, deadline: Instant) -> anyhow::Result<ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                let _ = self.child.wait();
                anyhow::bail!(
                    "{} did not exit in time after SIGTERM (killed)",
                    self.binary
                );
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

fn spawn(path: &Path, args: &[String], output: &Output) -> anyhow::Result<Child> {
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    let mut command = Command::new(path);
    command.args(args).stdin(Stdio::null());
    match output {
        Output::Quiet => {
            command
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .env("RUST_LOG", "warn,lapin=off,redis=error");
        }
        Output::Log(file) => {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .with_context(|| format!("opening {}", file.display()))?;
            command
                .stdout(log.try_clone()?)
                .stderr(log)
                .env("NO_COLOR", "1");
        }
    }
    command
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
