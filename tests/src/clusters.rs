//! The local clusters of `scripts/clusters.sh` (a 3-node RabbitMQ cluster on 5701–5703, a
//! Redis Cluster of 3 masters + 3 replicas on 7000–7005), for the tests that lose nodes.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;

/// The clusters' URL lists, as every binary takes them.
#[derive(Debug, Clone)]
pub struct Clusters {
    pub amqp_urls: String,
    pub redis_urls: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/clusters.sh")
}

/// Runs `scripts/clusters.sh ARGS`; its stdout, or an error with its stderr's last lines.
pub fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .with_context(|| format!("cannot run scripts/clusters.sh {}", args.join(" ")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        anyhow::bail!(
            "scripts/clusters.sh {} failed: {}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Clusters {
    /// Starts both clusters if they are not up (idempotent), with every RabbitMQ node's
    /// app running; returns their URLs.
    pub fn up() -> anyhow::Result<Clusters> {
        run(&["up"])?;
        let urls = run(&["urls"])?;
        let value = |name: &str| {
            urls.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
                .with_context(|| format!("scripts/clusters.sh urls printed no {name}"))
        };
        Ok(Clusters {
            amqp_urls: value("AMQP_URLS")?,
            redis_urls: value("REDIS_URLS")?,
        })
    }

    /// `host:port` of the Redis master that owns `key`'s slot now.
    pub fn redis_master_of(&self, key: &str) -> anyhow::Result<String> {
        Ok(run(&["redis-master-of", key])?.trim().to_string())
    }
}
