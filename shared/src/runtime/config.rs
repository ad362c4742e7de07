//! Command-line and environment settings shared by every binary (clap derive + `env`).
//!
//! Each binary flattens [`CommonArgs`] into its own `Config`, so `--amqp-url`, `--redis-url`,
//! `--namespace`, `--log-format` and `--result-ttl` mean the same thing everywhere.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::redact::redact_url;

/// The connection settings and namespace of the design's external contract.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// AMQP broker URL, or a comma-separated list of the nodes of one RabbitMQ cluster
    /// (each a full amqp:// or amqps:// URL): a binary connects to one of them, starting
    /// from a random one, and moves on to the next when its node is lost or refuses.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = UrlListParser(UrlList::amqp),
        global = true
    )]
    pub amqp_url: UrlList,

    /// Redis URL, or a comma-separated list of seed nodes of a Redis Cluster (cluster mode
    /// is detected from `INFO cluster`; see --redis-cluster).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        value_parser = UrlListParser(UrlList::redis),
        global = true
    )]
    pub redis_url: UrlList,

    /// Treat the --redis-url nodes as a Redis Cluster even when they cannot tell (`INFO`
    /// refused or unanswered); a node that says it is not a cluster node is still an error.
    #[arg(long, env = "TRIBUTARY_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// After each write that a message's ack depends on, wait until this many replicas
    /// have it (Redis `WAIT`); fewer within --redis-wait-timeout is an infrastructure error
    /// (the message is not acked and comes back). 0: do not wait.
    #[arg(
        long,
        env = "TRIBUTARY_REDIS_WAIT_REPLICAS",
        default_value_t = 0,
        global = true
    )]
    pub redis_wait_replicas: u32,

    /// How long a write waits for --redis-wait-replicas replicas.
    #[arg(long, env = "TRIBUTARY_REDIS_WAIT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub redis_wait_timeout: Duration,

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

/// One URL or a comma-separated list of them, each checked to be a URL of the expected
/// schemes (amqp/amqps for the broker, redis/rediss for Redis) with a host. `Display`
/// shows the list with passwords redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlList(Vec<String>);

impl UrlList {
    /// A list of URLs; each must have one of `schemes` and a host.
    pub fn parse(raw: &str, schemes: &[&str]) -> Result<Self, String> {
        let urls: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if urls.is_empty() {
            return Err("no URL given".into());
        }
        for (i, raw) in urls.iter().enumerate() {
            // By position: a URL that does not parse cannot be shown with its password hidden.
            let url = url::Url::parse(raw)
                .map_err(|e| format!("item {} of {} is not a URL ({e})", i + 1, urls.len()))?;
            if !schemes.contains(&url.scheme()) || url.host_str().is_none_or(str::is_empty) {
                return Err(format!(
                    "{}: the scheme must be {}, with a host",
                    redact_url(raw),
                    schemes.join(":// or ") + "://"
                ));
            }
        }
        Ok(Self(urls))
    }

    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// The first URL (the only one, for a single node).
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// Broker URLs (the `--amqp-url` parser).
    pub fn amqp(raw: &str) -> Result<Self, String> {
        Self::parse(raw, &["amqp", "amqps"])
    }

    /// Redis URLs (the `--redis-url` parser).
    pub fn redis(raw: &str) -> Result<Self, String> {
        Self::parse(raw, &["redis", "rediss"])
    }
}

/// The clap parser of the URL list flags: [`UrlList::amqp`] or [`UrlList::redis`], with an
/// error that names the flag and never echoes the value (clap's own message for a failed
/// `value_parser` quotes it whole, passwords included).
#[derive(Clone, Copy)]
pub struct UrlListParser(pub fn(&str) -> Result<UrlList, String>);

impl clap::builder::TypedValueParser for UrlListParser {
    type Value = UrlList;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<UrlList, clap::Error> {
        let flag = match arg.map(|a| (a.get_long(), a.get_env())) {
            Some((Some(long), Some(env))) => format!("--{long} / {}", env.to_string_lossy()),
            Some((Some(long), None)) => format!("--{long}"),
            _ => "a URL list".to_string(),
        };
        let parsed = match value.to_str() {
            Some(raw) => (self.0)(raw),
            None => Err("not UTF-8".to_string()),
        };
        parsed.map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{flag}: {e}\n"),
            )
        })
    }
}

impl std::fmt::Display for UrlList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted: Vec<String> = self.0.iter().map(|u| redact_url(u)).collect();
        f.write_str(&redacted.join(","))
    }
}

impl std::fmt::Debug for UrlList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UrlList({self})")
    }
}

impl ConnectionArgs {
    /// Settings for tests and tools that build a config in code: the local single nodes,
    /// or `AMQP_URL` / `REDIS_URL` from the environment.
    pub fn local(namespace: &str) -> Self {
        let env_or = |name: &str, default: &str, parse: fn(&str) -> Result<UrlList, String>| {
            let raw = std::env::var(name).unwrap_or_else(|_| default.into());
            parse(&raw).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        Self {
            amqp_url: env_or(
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                UrlList::amqp,
            ),
            redis_url: env_or("REDIS_URL", "redis://127.0.0.1:6379/", UrlList::redis),
            redis_cluster: false,
            redis_wait_replicas: 0,
            redis_wait_timeout: Duration::from_secs(2),
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

    #[test]
    fn url_lists_parse_and_redact() {
        let list = UrlList::amqp("amqp://u:secret@a:5701/%2f, amqp://u:secret@b:5702/%2f").unwrap();
        assert_eq!(list.urls().len(), 2);
        assert_eq!(list.first(), "amqp://u:secret@a:5701/%2f");
        assert_eq!(
            list.to_string(),
            "amqp://u:***@a:5701/%2f,amqp://u:***@b:5702/%2f"
        );
        assert!(UrlList::parse("redis://a:7000/,redis://b:7001/", &["redis"]).is_ok());
        let bad = UrlList::parse("amqp://a/,http://b/", &["amqp", "amqps"]).unwrap_err();
        assert_eq!(
            bad,
            "http://b/: the scheme must be amqp:// or amqps://, with a host"
        );
        assert!(UrlList::redis("amqp://a/").is_err());
        assert!(
            UrlList::parse("amqp://u:pw@a/,nope", &["amqp"])
                .unwrap_err()
                .contains("is not a URL")
        );
        assert!(UrlList::parse(" , ", &["amqp"]).is_err());
    }
}
