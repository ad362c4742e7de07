//! The Redis side: job counters, per-task state and the exactly-once apply of results.
//!
//! Every write is one Lua script that touches only the keys of one job (one hash tag, so
//! one slot of a Redis Cluster), so counters and aggregates move together and redelivery
//! changes nothing. A write a message's ack depends on goes through [`Store::write`], which
//! waits for `--redis-wait-replicas` replicas when asked to. [`conn`] is the connection
//! (one node or a cluster).

mod apply;
pub mod census;
pub mod conn;
pub mod hosts;
pub mod inputs;
pub mod jobs;
pub mod progress;
mod scan;
pub mod throughput;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::{AsyncCommands, FromRedisValue};
use serde::Serialize;
use uuid::Uuid;

use crate::names::Names;
use crate::runtime::config::ConnectionArgs;
use crate::stats::GroupStats;
pub use conn::{Lua, Named, RedisConn, ScriptCall};
pub use inputs::{Checkpoint, InputRef, Registration};

const STATE_LUA: &str = include_str!("lua/state.lua");
const MARK_LUA: &str = include_str!("lua/mark.lua");
const APPLY_LUA: &str = include_str!("lua/apply.lua");
const APPLY_FRESH_LUA: &str = include_str!("lua/apply_fresh.lua");
const GROUPS_LUA: &str = include_str!("lua/groups.lua");
const TOTAL_LUA: &str = include_str!("lua/total.lua");
const BEGIN_LUA: &str = include_str!("lua/begin.lua");
const REGISTER_LUA: &str = include_str!("lua/register.lua");
const CLAIM_LUA: &str = include_str!("lua/claim.lua");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis at {url}: {source}")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis holds a malformed value at {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("redis: {0}")]
    Config(String),
    #[error("redis: only {got} of {wanted} replicas acknowledged a write within {timeout:?}")]
    NotReplicated {
        wanted: u32,
        got: u32,
        timeout: Duration,
    },
    #[error("redis cluster: cluster_state is not ok")]
    ClusterDown,
    #[error("redis: only {got} of {wanted} replicas attached to {master}")]
    TooFewReplicas {
        master: String,
        got: u32,
        wanted: u32,
    },
}

impl StoreError {
    /// Redis refused a script call with an error raised while the script ran (a key of
    /// the wrong type, a value it cannot parse): the same call fails again, unlike a lost
    /// connection, a failover or a full memory.
    pub fn is_script_error(&self) -> bool {
        let StoreError::Redis(e) = self else {
            return false;
        };
        matches!(e.code(), Some("ERR" | "WRONGTYPE"))
            && e.detail().is_some_and(|d| d.contains("script"))
    }
}

/// A state change of tasks, applied idempotently (see `lua/state.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Fetched,
    Processed,
    /// Failed; waits in a delay queue for another attempt.
    Retrying,
    /// Put aside by its host's rate limit, pause or concurrency cap (not a failure).
    Deferred,
    Dead,
    /// A dead task was sent back to its stage by `dlq replay`.
    Replayed,
}

impl Mark {
    fn op(self) -> &'static str {
        match self {
            Mark::Fetched => "f",
            Mark::Processed => "p",
            Mark::Retrying => "r",
            Mark::Deferred => "w",
            Mark::Dead => "d",
            Mark::Replayed => "q",
        }
    }
}

/// The status JSON of the design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub total: u64,
    pub fetched: u64,
    pub processed: u64,
    pub aggregated: u64,
    /// Tasks that failed and wait in a delay queue for another attempt.
    pub retrying: u64,
    /// Tasks put aside by their host's rate limit, pause or concurrency cap.
    pub deferred: u64,
    pub dead: u64,
    /// Whether every producer input of the job is registered (`done` waits for it).
    pub enqueue: EnqueueState,
    pub done: bool,
}

/// Whether a job's producer inputs are all registered: `in_progress` while one is not
/// (being published, or interrupted and waiting to be resumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnqueueState {
    InProgress,
    Complete,
}

/// The results JSON of the design.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResults {
    pub job_id: Uuid,
    pub groups: BTreeMap<String, GroupStats>,
}

/// A job's latency histogram: (upper bound in ms, tasks).
pub type LatencyHistogram = Vec<(f64, u64)>;

/// The Redis store of one namespace. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    names: Names,
    ttl_secs: u64,
    /// `--redis-wait-replicas` and `--redis-wait-timeout`.
    wait_replicas: u32,
    wait_timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
}

struct Scripts {
    mark: Lua,
    apply: Lua,
    apply_fresh: Lua,
    total: Lua,
    begin: Lua,
    register: Lua,
    claim: Lua,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("names", &self.names).finish()
    }
}

impl Store {
    /// Connects to the Redis (one node or a cluster) of `args`, in its namespace, failing
    /// if Redis is not reachable now; later outages are retried by the connection, each
    /// command timing out after 5 s.
    pub async fn connect(args: &ConnectionArgs) -> Result<Self, StoreError> {
        Ok(Self {
            conn: conn::open(args).await?,
            names: Names::new(&args.namespace),
            ttl_secs: args.result_ttl.as_secs().max(1),
            wait_replicas: args.redis_wait_replicas,
            wait_timeout: args.redis_wait_timeout,
            scripts: std::sync::Arc::new(Scripts {
                mark: Lua::new(&format!("{STATE_LUA}\n{MARK_LUA}")),
                apply: Lua::new(&format!("{STATE_LUA}\n{GROUPS_LUA}\n{APPLY_LUA}")),
                apply_fresh: Lua::new(&format!("{STATE_LUA}\n{GROUPS_LUA}\n{APPLY_FRESH_LUA}")),
                total: Lua::new(TOTAL_LUA),
                begin: Lua::new(BEGIN_LUA),
                register: Lua::new(REGISTER_LUA),
                claim: Lua::new(CLAIM_LUA),
            }),
        })
    }

    /// Runs a state-changing script call that a message's ack depends on: with
    /// `--redis-wait-replicas N`, `Ok` only once N replicas have the write.
    pub async fn write<T: FromRedisValue>(&self, call: &ScriptCall<'_>) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        conn.eval_durable(call, self.wait_replicas, self.wait_timeout)
            .await
    }

    /// Runs a script call that needs no replica acknowledgement (reads, and writes nothing
    /// is acked on, such as rate-limit state).
    pub async fn eval<T: FromRedisValue>(&self, call: &ScriptCall<'_>) -> Result<T, StoreError> {
        self.conn.clone().eval(call).await
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// How long job keys live (`--result-ttl`).
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// The shared, self-reconnecting connection (for other scripts, e.g. the fetcher's
    /// per-host limiter).
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// Adds `tasks` to the job's total (creating the job); returns the total now. Called
    /// before any of them is published, so a job is never `done` before its last task is
    /// counted.
    pub async fn add_to_total(&self, job: Uuid, tasks: u64) -> Result<u64, StoreError> {
        let mut call = ScriptCall::new(&self.scripts.total);
        call.key(self.names.status_key(job))
            .arg(tasks)
            .arg(self.ttl_secs);
        self.write(&call).await
    }

    /// Applies a state change to tasks of one job; returns how many changed.
    pub async fn mark(&self, job: Uuid, mark: Mark, tasks: &[Uuid]) -> Result<u64, StoreError> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let mut call = ScriptCall::new(&self.scripts.mark);
        call.key(self.names.status_key(job))
            .key(self.names.tasks_key(job))
            .arg(mark.op())
            .arg(self.ttl_secs);
        for task in tasks {
            call.arg(task.to_string());
        }
        self.write(&call).await
    }

    /// Applies one mark to tasks of possibly several jobs: one script call per job.
    pub async fn mark_many(
        &self,
        mark: Mark,
        tasks: impl IntoIterator<Item = (Uuid, Uuid)>,
    ) -> Result<(), StoreError> {
        for (job, tasks) in by_job(tasks) {
            self.mark(job, mark, &tasks).await?;
        }
        Ok(())
    }

    /// The job's status, or `None` for a job Redis does not know.
    pub async fn status(&self, job: Uuid) -> Result<Option<JobStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, i64> = conn.hgetall(self.names.status_key(job)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name: &str| fields.get(name).copied().unwrap_or(0).max(0) as u64;
        let total = get("total");
        let aggregated = get("aggregated");
        let dead = get("dead");
        let complete = get("enqueuing") == 0;
        Ok(Some(JobStatus {
            job_id: job,
            total,
            fetched: get("fetched"),
            processed: get("processed"),
            aggregated,
            retrying: get("retrying"),
            deferred: get("deferred"),
            dead,
            enqueue: match complete {
                true => EnqueueState::Complete,
                false => EnqueueState::InProgress,
            },
            done: complete && total > 0 && aggregated + dead >= total,
        }))
    }

    /// The job's aggregate, or `None` for a job Redis does not know.
    pub async fn results(&self, job: Uuid) -> Result<Option<JobResults>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.names.groups_key(job);
        let raw: HashMap<String, String> = conn.hgetall(&key).await?;
        if raw.is_empty() && self.status(job).await?.is_none() {
            return Ok(None);
        }
        let mut groups = BTreeMap::new();
        for (group, packed) in raw {
            let stats = unpack_group(&packed).ok_or_else(|| StoreError::Corrupt {
                key: key.clone(),
                detail: format!("group {group:?} = {packed:?}"),
            })?;
            groups.insert(group, stats);
        }
        Ok(Some(JobResults {
            job_id: job,
            groups,
        }))
    }

    /// Tasks per latency bucket (upper bound in ms), ascending.
    pub async fn latency(&self, job: Uuid) -> Result<LatencyHistogram, StoreError> {
        let mut conn = self.conn.clone();
        let raw: HashMap<i64, u64> = conn.hgetall(self.names.latency_key(job)).await?;
        let mut buckets: Vec<(f64, u64)> = raw
            .into_iter()
            .map(|(b, n)| (2f64.powf((b + 1) as f64 / 4.0) - 1.0, n))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(buckets)
    }

    /// Answers when Redis serves (a node answers; a cluster says its state is ok) and, with
    /// `--redis-wait-replicas N`, every master has N replicas attached.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.conn.clone().healthy(self.wait_replicas).await
    }
}

/// Groups `(job, item)` pairs by job, keeping their order within a job.
pub fn by_job<T>(items: impl IntoIterator<Item = (Uuid, T)>) -> BTreeMap<Uuid, Vec<T>> {
    let mut out: BTreeMap<Uuid, Vec<T>> = BTreeMap::new();
    for (job, item) in items {
        out.entry(job).or_default().push(item);
    }
    out
}

fn unpack_group(packed: &str) -> Option<GroupStats> {
    let mut parts = packed.split(' ');
    let records = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let sum = parse_lua_number(parts.next()?)?;
    let min = parse_lua_number(parts.next()?)?;
    let max = parse_lua_number(parts.next()?)?;
    let mut stats = GroupStats::empty();
    stats.merge(records, count, sum, min, max);
    Some(stats)
}

/// Lua prints infinities as `inf` / `-inf` and NaN as `nan` or `-nan`.
fn parse_lua_number(s: &str) -> Option<f64> {
    match s {
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" | "-nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Waits until `job` is done, calling `progress` with each status it sees. Rides out
/// Redis hiccups; gives up after 30 failed polls in a row.
pub async fn wait_until_done(
    store: &Store,
    job: Uuid,
    poll: Duration,
    mut progress: impl FnMut(&JobStatus),
) -> Result<JobStatus, StoreError> {
    let mut failures = 0;
    loop {
        match store.status(job).await {
            Ok(Some(status)) => {
                failures = 0;
                progress(&status);
                if status.done {
                    return Ok(status);
                }
            }
            Ok(None) => failures = 0,
            Err(e) if failures < 30 => {
                failures += 1;
                tracing::debug!("status poll failed ({failures}): {e}");
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_groups_parse() {
        let g = unpack_group("2 5 10.5 -1 4.25").unwrap();
        assert_eq!(
            (g.records, g.count, g.sum, g.min, g.max),
            (2, 5, 10.5, -1.0, 4.25)
        );
        assert_eq!(g.mean, 2.1);
        assert!(unpack_group("2 5").is_none());
        assert!(unpack_group("inf 1 1 1 1").is_none());
        assert_eq!(
            unpack_group("1 1 inf -inf 1").unwrap().min,
            f64::NEG_INFINITY
        );
    }
}
