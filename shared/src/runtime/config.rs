//! Command-line and environment settings shared by every binary (clap derive + `env`).
//!
//! Each binary flattens [`CommonArgs`] into its own `Config`, so `--amqp-url`, `--redis-url`,
//! `--namespace`, `--log-format` and `--result-ttl` mean the same thing everywhere.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// The connection settings and namespace of the design's external contract.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// AMQP broker URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    pub amqp_url: String,

    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub redis_url: String,

    /// Prefix of every exchange, queue and Redis key.
    #[arg(
        long,
        env = "TRIBUTARY_NAMESPACE",
        default_value = "tributary",
        global = true,
        value_parser = parse_namespace
    )]
    pub namespace: String,

    /// Type of the stage queues (fetch, process, results) when they are first declared.
    #[arg(
        long,
        env = "TRIBUTARY_QUEUE_TYPE",
        value_enum,
        default_value_t = QueueType::Classic,
        global = true
    )]
    pub queue_type: QueueType,

    /// How long job keys live in Redis after their last update (humantime, e.g. `7d`).
    #[arg(long, env = "TRIBUTARY_RESULT_TTL", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub result_ttl: Duration,
}

/// Logging settings.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log line format on stderr.
    #[arg(long, env = "TRIBUTARY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Everything a binary flattens into its config.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Settings of a long-running worker.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// On SIGTERM/SIGINT, how long to wait for in-flight work before leaving it unacked.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Unacked messages the broker may push to this worker (AMQP prefetch).
    #[arg(long, env = "TRIBUTARY_PREFETCH")]
    pub prefetch: Option<u16>,

    /// Serve /metrics, /livez and /readyz on this address (e.g. `0.0.0.0:9100`; off by default).
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

/// Namespaces become queue names and Redis key prefixes: keep them to a safe alphabet.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a namespace is 1-64 characters of [A-Za-z0-9._-]".into())
    }
}

impl ConnectionArgs {
    /// Settings for tests and tools that build a config in code.
    pub fn local(namespace: &str) -> Self {
        Self {
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            redis_url: std::env::var("REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into()),
            namespace: namespace.to_string(),
            queue_type: QueueType::Classic,
            result_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_alphabet() {
        assert!(parse_namespace("tributary").is_ok());
        assert!(parse_namespace("t-1.a_b").is_ok());
        assert!(parse_namespace("").is_err());
        assert!(parse_namespace("a b").is_err());
        assert!(parse_namespace("a{b}").is_err());
    }
}
