//! A read-only view of the fetchers' per-host politeness state (written only by
//! `fetcher-worker/src/politeness/`), for the dashboard's hosts page: which hosts have keys,
//! and for each its pause, AIMD rate factor, leases in flight, next slot and turn horizon.
//!
//! Hosts are found by their keys (`ns:host:{<host>}:*`): `SCAN` on one node; on a Redis
//! Cluster `KEYS`, which the client sends to every master (the dashboard asks for at most
//! [`MAX_HOSTS`] hosts, on a page view, not per request of the pipeline).

use std::collections::BTreeSet;
use std::sync::LazyLock;

use serde::Serialize;

use super::{Lua, RedisConn, ScriptCall, Store, StoreError};

const READ_LUA: &str = include_str!("lua/host_read.lua");
static READ: LazyLock<Lua> = LazyLock::new(|| Lua::new(READ_LUA));

/// Most hosts listed.
pub const MAX_HOSTS: usize = 500;

/// One host's state now (times relative to Redis's clock).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostState {
    pub host: String,
    /// Paused for this much longer (ms), after a 429/503 with `Retry-After`.
    pub paused_for_ms: Option<u64>,
    /// The AIMD factor of its configured rate after 429s (1 = full rate), when cut.
    pub rate_factor: Option<f64>,
    /// Concurrency leases held now across the fleet.
    pub leases: u64,
    /// Its next free rate-limit slot is this far ahead (ms).
    pub next_slot_ms: Option<u64>,
    /// Tasks put aside have turns up to this far ahead (ms): the deferred backlog.
    pub deferred_for_ms: Option<u64>,
}

/// The hosts that have politeness keys now, sorted, at most [`MAX_HOSTS`].
pub async fn known(store: &Store) -> Result<Vec<String>, StoreError> {
    let prefix = format!("{}:host:{{", store.names().namespace());
    let pattern = format!("{prefix}*");
    let mut conn = store.connection();
    let keys: Vec<String> = match &conn {
        RedisConn::Single(_) => scan(&mut conn, &pattern).await?,
        RedisConn::Cluster(_) => {
            redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await?
        }
    };
    let hosts: BTreeSet<String> = keys
        .iter()
        .filter_map(|k| {
            k.strip_prefix(&prefix)?
                .split_once("}:")
                .map(|(h, _)| h.to_string())
        })
        .collect();
    Ok(hosts.into_iter().take(MAX_HOSTS).collect())
}

async fn scan(conn: &mut RedisConn, pattern: &str) -> Result<Vec<String>, StoreError> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 || keys.len() >= MAX_HOSTS * 6 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One host's state.
pub async fn read(store: &Store, host: &str) -> Result<HostState, StoreError> {
    let names = store.names();
    let mut call = ScriptCall::new(&READ);
    call.key(names.host_tat_key(host))
        .key(names.host_pause_key(host))
        .key(names.host_rate_key(host))
        .key(names.host_leases_key(host))
        .key(names.host_queue_key(host));
    let raw: Vec<String> = store.eval(&call).await?;
    let num = |i: usize| raw.get(i).and_then(|s| s.parse::<f64>().ok());
    let now = num(0).unwrap_or(0.0);
    let ahead = |i: usize| {
        num(i)
            .filter(|t| *t > now)
            .map(|t| ((t - now) / 1000.0) as u64)
    };
    Ok(HostState {
        host: host.to_string(),
        paused_for_ms: ahead(2),
        rate_factor: num(3),
        leases: num(4).unwrap_or(0.0) as u64,
        next_slot_ms: ahead(1),
        deferred_for_ms: ahead(5),
    })
}
