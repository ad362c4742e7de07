//! A Redis server of a test's own, on a free port, for tests that take Redis away: never
//! the shared one. It keeps its data across [`RedisNode::stop`] and [`RedisNode::start`]
//! (an append-only file fsynced on every write, in a temporary directory, replayed at
//! start), and refuses connections while it is stopped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A `redis-server` child process.
pub struct RedisNode {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A TCP port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl RedisNode {
    /// Starts a server on a free port; returns once it answers.
    pub fn new() -> anyhow::Result<RedisNode> {
        let mut node = RedisNode {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
        };
        node.start()?;
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) with the data it had; returns once it accepts
    /// connections.
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "redis on {} runs already", self.port);
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start redis-server")?;
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "redis on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (SIGTERM: it flushes its append-only file) and waits for it to
    /// exit; new connections are refused until [`RedisNode::start`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::procs::signal(child.id(), "TERM")?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
