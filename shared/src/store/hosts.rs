//! A read-only view of the fetchers' per-host politeness state (written only by
//! `fetcher-worker/src/politeness/`), for the dashboard's hosts page: which hosts have keys,
//! and for each its configured rate (as the fetchers advertise it, [`advertise`]), pause,
//! AIMD rate factor, leases in flight, next slot, turn horizon and the tasks deferred.
//!
//! Hosts are found by their keys (`ns:host:{<host>}:*`) with `SCAN`, on a Redis Cluster on
//! every master in turn ([`RedisConn::scan_keys`]), never `KEYS`; the dashboard asks for
//! at most [`MAX_HOSTS`] hosts, on a page view, not per request of the pipeline.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use futures::future::join_all;
use serde::Serialize;

use super::{Lua, RedisConn, ScriptCall, Store, StoreError};
use crate::names::Names;

const READ_LUA: &str = include_str!("lua/host_read.lua");
static READ: LazyLock<Lua> = LazyLock::new(|| Lua::new(READ_LUA));

/// Most hosts listed.
pub const MAX_HOSTS: usize = 500;
/// How long the advertised rates outlive the last fetcher that advertised one.
pub const RATES_TTL_SECS: i64 = 600;

/// One host's state now (times relative to Redis's clock).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostState {
    pub host: String,
    /// Its configured rate (requests per second), as a fetcher last advertised it.
    pub rate_per_sec: Option<f64>,
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
    /// Tasks put aside whose turn has not come: the backlog over the interval in force
    /// (each turn moves the horizon one interval on); needs the configured rate.
    pub deferred: Option<u64>,
}

/// A fetcher's word on the rate it applies to `host` (`interval_us` between requests).
pub async fn advertise(
    conn: &mut RedisConn,
    names: &Names,
    host: &str,
    interval_us: u64,
) -> Result<(), StoreError> {
    let key = names.host_rates_key();
    let _: () = redis::pipe()
        .hset(&key, host, interval_us)
        .ignore()
        .expire(&key, RATES_TTL_SECS)
        .ignore()
        .query_async(conn)
        .await?;
    Ok(())
}

/// The state of each of `hosts`, with its advertised rate.
pub async fn states(store: &Store, hosts: &[String]) -> Result<Vec<HostState>, StoreError> {
    let intervals: Vec<Option<u64>> = match hosts {
        [] => Vec::new(),
        _ => {
            redis::cmd("HMGET")
                .arg(store.names().host_rates_key())
                .arg(hosts)
                .query_async(&mut store.connection())
                .await?
        }
    };
    let reads = hosts
        .iter()
        .zip(intervals.into_iter().chain(std::iter::repeat(None)))
        .map(|(host, interval)| read(store, host, interval));
    join_all(reads).await.into_iter().collect()
}

/// The hosts that have politeness keys now, sorted, at most [`MAX_HOSTS`] (with more,
/// those the scan finds first: on a cluster, the first masters').
pub async fn known(store: &Store) -> Result<Vec<String>, StoreError> {
    let prefix = format!("{}:host:{{", store.names().namespace());
    let pattern = format!("{prefix}*");
    let keys = store
        .connection()
        .scan_keys(&pattern, MAX_HOSTS * 6)
        .await?;
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

/// One host's state; `interval_us` is its advertised rate's interval.
pub async fn read(
    store: &Store,
    host: &str,
    interval_us: Option<u64>,
) -> Result<HostState, StoreError> {
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
    let ahead_us = |i: usize| num(i).filter(|t| *t > now).map(|t| t - now);
    let ahead = |i: usize| ahead_us(i).map(|us| (us / 1000.0) as u64);
    let factor = num(3);
    let interval = interval_us.filter(|i| *i > 0).map(|i| i as f64);
    Ok(HostState {
        host: host.to_string(),
        rate_per_sec: interval.map(|i| 1e6 / i),
        paused_for_ms: ahead(2),
        rate_factor: factor,
        leases: num(4).unwrap_or(0.0) as u64,
        next_slot_ms: ahead(1),
        deferred_for_ms: ahead(5),
        deferred: interval.map(|i| {
            let in_force = i / factor.unwrap_or(1.0).max(1e-6);
            // The horizon is the next turn to give: the turns given are one interval
            // apart before it, and those still ahead of now are outstanding.
            (ahead_us(5).unwrap_or(0.0) / in_force).floor() as u64
        }),
    })
}
