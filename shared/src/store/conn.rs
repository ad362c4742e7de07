//! The store's Redis connection: one node (a self-reconnecting `ConnectionManager`) or a
//! Redis Cluster (redis's cluster-async client, which follows `MOVED`/`ASK` and refreshes
//! its slot map by itself), behind one type every script and command runs on.
//!
//! Also here: how `--redis-url` / `--redis-cluster` choose between the two (a list of seed
//! nodes, cluster mode detected from `INFO cluster`), the replica check of
//! `--redis-wait-replicas` at start, and the script calls: [`ScriptCall`] is an `EVALSHA`
//! that [`RedisConn::eval`] runs (loading the script on `NOSCRIPT`), and
//! [`RedisConn::eval_durable`] runs with a `WAIT` for replicas in the same round trip on
//! the same connection, so the `WAIT` covers that write and no other connection's.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisFuture, Script, ToRedisArgs, Value};

use super::StoreError;
use crate::runtime::config::ConnectionArgs;
use crate::runtime::redact::redact_url;

/// How long connecting and each command may take before they count as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one Redis node or to a Redis Cluster. Cheap to clone (both sides are
/// multiplexed handles).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// A Lua script: its code and its SHA1 (for `EVALSHA`).
#[derive(Debug, Clone)]
pub struct Lua {
    code: String,
    hash: String,
}

impl Lua {
    pub fn new(code: &str) -> Self {
        Self {
            code: code.to_string(),
            hash: Script::new(code).get_hash().to_string(),
        }
    }
}

/// One call of a Lua script: its keys (every key it touches, all in one hash slot) and
/// arguments, sent as `EVALSHA` (and as `EVAL` to a node that does not know the script:
/// `EVAL` goes to the node of the keys, where `SCRIPT LOAD` would go to every node of a
/// cluster and fail while one of them is down).
pub struct ScriptCall<'a> {
    script: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> ScriptCall<'a> {
    pub fn new(script: &'a Lua) -> Self {
        Self {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// `EVALSHA` (`by_hash`) or `EVAL` of the call.
    fn cmd(&self, by_hash: bool) -> Cmd {
        let mut cmd = match by_hash {
            true => redis::cmd("EVALSHA"),
            false => redis::cmd("EVAL"),
        };
        match by_hash {
            true => cmd.arg(&self.script.hash),
            false => cmd.arg(&self.script.code),
        };
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}

/// A script's named results: it returns `{'name', value, 'name', value, ...}` (integers,
/// or integers as strings where they may pass 2^53), read by name rather than position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named(std::collections::HashMap<String, i64>);

impl Named {
    /// The value of `name`; a script that did not return it is a bug, reported as such.
    pub fn get(&self, name: &str) -> Result<i64, StoreError> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| StoreError::Corrupt {
                key: "a script's results".into(),
                detail: format!("no {name:?} in {:?}", self.0),
            })
    }

    /// The value of `name`, if the script returned it.
    pub fn get_opt(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }
}

impl FromRedisValue for Named {
    fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
        let items: Vec<Value> = redis::from_redis_value(value)?;
        let mut out = std::collections::HashMap::new();
        for pair in items.chunks(2) {
            let [name, value] = pair else {
                return Err("a script's named results come in pairs".into());
            };
            let name: String = redis::from_redis_value(name.clone())?;
            let value: i64 = match value {
                Value::Int(n) => *n,
                other => redis::from_redis_value::<String>(other.clone())?
                    .parse()
                    .map_err(|_| redis::ParsingError::from("a named result is not an integer"))?,
            };
            out.insert(name, value);
        }
        Ok(Named(out))
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

impl RedisConn {
    /// Runs a script call; a Redis that does not know the script (restarted, or a node
    /// new to the cluster) gets it with an `EVAL`, which also caches it there.
    pub async fn eval<T: FromRedisValue>(
        &mut self,
        call: &ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        match call.cmd(true).query_async(self).await {
            Err(e) if is_noscript(&e) => Ok(call.cmd(false).query_async(self).await?),
            other => Ok(other?),
        }
    }

    /// [`RedisConn::eval`], then `WAIT replicas timeout` in the same round trip on the same
    /// connection (in a cluster, to the master of the script's keys): `Ok` only when at
    /// least `replicas` replicas acknowledged the write. With 0 replicas, just the call.
    pub async fn eval_durable<T: FromRedisValue>(
        &mut self,
        call: &ScriptCall<'_>,
        replicas: u32,
        timeout: Duration,
    ) -> Result<T, StoreError> {
        if replicas == 0 {
            return self.eval(call).await;
        }
        let durable = |script| {
            let mut pipe = redis::pipe();
            pipe.add_command(script)
                .cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64);
            pipe
        };
        let (value, acked): (T, u32) = match durable(call.cmd(true)).query_async(self).await {
            Err(e) if is_noscript(&e) => durable(call.cmd(false)).query_async(self).await?,
            other => other?,
        };
        if acked < replicas {
            return Err(StoreError::NotReplicated {
                wanted: replicas,
                got: acked,
                timeout,
            });
        }
        Ok(value)
    }

    /// Whether Redis serves now: a node answers `PING`, a cluster says `cluster_state:ok`
    /// from one of its masters; and with `replicas` > 0, whether every master has that many
    /// replicas attached (else writes could not be acknowledged by them: better not to
    /// consume than to fail every write and return every delivery).
    pub async fn healthy(&mut self, replicas: u32) -> Result<(), StoreError> {
        match self {
            RedisConn::Single(c) => {
                let _: String = redis::cmd("PING").query_async(c).await?;
            }
            RedisConn::Cluster(c) => {
                let info = cluster_text(c, "INFO").await?;
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    return Err(StoreError::ClusterDown);
                }
            }
        }
        match self.short_of_replicas(replicas).await? {
            Some((master, got)) => Err(StoreError::TooFewReplicas {
                master: master.unwrap_or_else(|| "the node".into()),
                got,
                wanted: replicas,
            }),
            None => Ok(()),
        }
    }

    /// The first master with fewer than `wanted` replicas attached (its address in a
    /// cluster, `None` for the one node) and how many it has; `None` when all have enough.
    async fn short_of_replicas(
        &mut self,
        wanted: u32,
    ) -> Result<Option<(Option<String>, u32)>, StoreError> {
        if wanted == 0 {
            return Ok(None);
        }
        match self {
            RedisConn::Single(c) => {
                let info: String = redis::cmd("INFO").arg("replication").query_async(c).await?;
                let got = info_field(&info, "connected_slaves").unwrap_or(0);
                Ok((got < wanted).then_some((None, got)))
            }
            RedisConn::Cluster(c) => {
                let nodes = cluster_text(c, "NODES").await?;
                Ok(replicas_per_master(&nodes)
                    .into_iter()
                    .find(|(_, got)| *got < wanted)
                    .map(|(master, got)| (Some(master), got)))
            }
        }
    }
}

/// `CLUSTER <subcommand>` as text, from one of the masters.
pub(super) async fn cluster_text(
    c: &mut ClusterConnection,
    subcommand: &str,
) -> Result<String, StoreError> {
    let value = c
        .route_command(
            redis::cmd("CLUSTER").arg(subcommand).clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
}

/// Connects as `--redis-url` / `--redis-cluster` say, and checks that every master has the
/// replicas `--redis-wait-replicas` asks for.
pub async fn open(args: &ConnectionArgs) -> Result<RedisConn, StoreError> {
    let urls = args.redis_url.urls();
    let cluster = detect_cluster(urls, args.redis_cluster).await?;
    let conn = if cluster {
        open_cluster(urls).await?
    } else {
        open_single(urls).await?
    };
    if args.redis_wait_replicas > 0 {
        check_replicas(&conn, urls, args.redis_wait_replicas).await?;
    }
    Ok(conn)
}

async fn open_single(urls: &[String]) -> Result<RedisConn, StoreError> {
    let [url] = urls else {
        return Err(StoreError::Config(format!(
            "{} Redis URLs given but none is a cluster node: give one URL for a single Redis",
            urls.len()
        )));
    };
    let connect_err = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    let client = redis::Client::open(url.as_str()).map_err(connect_err)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(connect_err)?;
    Ok(RedisConn::Single(conn))
}

async fn open_cluster(urls: &[String]) -> Result<RedisConn, StoreError> {
    let listed = urls
        .iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",");
    let connect_err = |source| StoreError::Connect {
        url: listed.clone(),
        source,
    };
    let client = ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .retries(6)
        .build()
        .map_err(connect_err)?;
    let conn = client.get_async_connection().await.map_err(connect_err)?;
    Ok(RedisConn::Cluster(conn))
}

/// Asks each seed node whether it runs in cluster mode (`INFO cluster`); nodes that do not
/// answer (down, or `INFO` refused) are skipped. A list that mixes cluster and non-cluster
/// nodes is an error, and so is a non-cluster node with `--redis-cluster` (`forced`), which
/// otherwise only decides for nodes that cannot tell.
async fn detect_cluster(urls: &[String], forced: bool) -> Result<bool, StoreError> {
    let mut cluster = Vec::new();
    let mut single = Vec::new();
    let mut last_error = None;
    for url in urls {
        match cluster_enabled(url).await {
            Ok(true) => cluster.push(redact_url(url)),
            Ok(false) => single.push(redact_url(url)),
            Err(e) => last_error = Some(e),
        }
    }
    match (cluster.is_empty(), single.is_empty()) {
        (_, false) if forced => Err(StoreError::Config(format!(
            "--redis-cluster, but {} {} not a cluster node (cluster_enabled:0)",
            single.join(","),
            if single.len() == 1 { "is" } else { "are" }
        ))),
        (true, true) if forced => Ok(true),
        (false, false) => Err(StoreError::Config(format!(
            "the Redis URLs mix cluster nodes ({}) and non-cluster nodes ({})",
            cluster.join(","),
            single.join(",")
        ))),
        (false, true) => Ok(true),
        (true, false) => Ok(false),
        (true, true) => Err(last_error.expect("at least one URL was tried")),
    }
}

async fn cluster_enabled(url: &str) -> Result<bool, StoreError> {
    let connect_err = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    let client = redis::Client::open(url).map_err(connect_err)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(connect_err)?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// Fails unless every master (the node, or each cluster master) has at least `wanted`
/// replicas attached.
async fn check_replicas(conn: &RedisConn, urls: &[String], wanted: u32) -> Result<(), StoreError> {
    match conn.clone().short_of_replicas(wanted).await? {
        Some((master, got)) => Err(StoreError::Config(format!(
            "--redis-wait-replicas {wanted}: only {got} replica{} attached to {}",
            if got == 1 { "" } else { "s" },
            master.unwrap_or_else(|| redact_url(&urls[0]))
        ))),
        None => Ok(()),
    }
}

fn info_field(info: &str, field: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// From `CLUSTER NODES`: each serving master (`ip:port`) and how many healthy replicas
/// follow it.
pub fn replicas_per_master(nodes: &str) -> Vec<(String, u32)> {
    let rows = node_rows(nodes);
    rows.iter()
        .filter(|f| is_serving_master(f))
        .map(|m| {
            let address = m[1].split('@').next().unwrap_or(m[1]).to_string();
            let replicas = rows
                .iter()
                .filter(|r| r[3] == m[0] && !failed(r[2]))
                .count();
            (address, replicas as u32)
        })
        .collect()
}

/// The rows of `CLUSTER NODES`, split into their fields (id, address, flags, master,
/// ping, pong, epoch, link state, then the slots served).
pub(super) fn node_rows(nodes: &str) -> Vec<Vec<&str>> {
    nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() >= 8)
        .collect()
}

/// A row of [`node_rows`] that is a master, not failing, serving slots.
pub(super) fn is_serving_master(fields: &[&str]) -> bool {
    fields[2].split(',').any(|flag| flag == "master") && !failed(fields[2]) && fields.len() > 8
}

fn failed(flags: &str) -> bool {
    flags.split(',').any(|f| f == "fail" || f == "fail?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_counted_per_serving_master() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b1 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c1 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d1 127.0.0.1:7003@17003 slave a1 0 0 1 connected
e1 127.0.0.1:7004@17004 slave b1 0 0 2 connected
f1 127.0.0.1:7005@17005 slave,fail b1 0 0 2 connected
g1 127.0.0.1:7006@17006 master - 0 0 4 connected 10923-16383
";
        assert_eq!(
            replicas_per_master(nodes),
            vec![
                ("127.0.0.1:7000".to_string(), 1),
                ("127.0.0.1:7001".to_string(), 1),
                ("127.0.0.1:7006".to_string(), 0),
            ]
        );
    }

    #[test]
    fn named_results_parse_by_name() {
        let value = Value::Array(vec![
            Value::BulkString(b"granted".to_vec()),
            Value::Int(1),
            Value::BulkString(b"turn".to_vec()),
            Value::BulkString(b"1733390000000000".to_vec()),
        ]);
        let named: Named = redis::from_redis_value(value).unwrap();
        assert_eq!(named.get("granted").unwrap(), 1);
        assert_eq!(named.get("turn").unwrap(), 1_733_390_000_000_000);
        assert!(named.get("wait_ms").is_err());
        assert_eq!(named.get_opt("wait_ms"), None);
        let odd = Value::Array(vec![Value::BulkString(b"granted".to_vec())]);
        assert!(redis::from_redis_value::<Named>(odd).is_err());
    }

    #[test]
    fn info_fields_parse() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n";
        assert_eq!(info_field(info, "connected_slaves"), Some(2));
        assert_eq!(info_field(info, "missing"), None);
    }
}
