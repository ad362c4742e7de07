//! The jobs index: which jobs a namespace has, newest first, for the dashboard's listing.
//!
//! One sorted set per namespace ([`Names::jobs_index_key`](crate::names::Names)): member the
//! job id, score its creation time in ms. The job's total and counters stay in its status
//! hash; a page of the index is one `ZREVRANGE` plus one `HGETALL` per job shown.
//!
//! Redis Cluster: the index is one key, so one slot; it is written once per job (where its
//! total is first set) and never per task, so that slot is not hot. It cannot be updated in
//! the same script as the job's keys (another slot), so the two are kept consistent from
//! both sides: every registration drops entries older than the job TTL and refreshes the
//! index's own TTL, and a listing drops the entries whose status hash has expired.

use std::sync::LazyLock;

use futures::future::join_all;
use redis::AsyncCommands as _;
use serde::Serialize;
use uuid::Uuid;

use super::{JobStatus, Lua, ScriptCall, Store, StoreError};

const REGISTER_LUA: &str = include_str!("lua/jobs.lua");
static REGISTER: LazyLock<Lua> = LazyLock::new(|| Lua::new(REGISTER_LUA));

/// Most jobs one page may hold.
pub const MAX_PAGE: usize = 200;

/// One job of the index, with its counters now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobEntry {
    pub created_ms: u64,
    #[serde(flatten)]
    pub status: JobStatus,
}

/// A page of the index, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobsPage {
    pub jobs: Vec<JobEntry>,
    /// Jobs in the index (all pages).
    pub count: u64,
    pub offset: u64,
}

/// Adds `job` to the index with the creation time now (a job already there keeps its
/// time). Called where a job's total is first set: `enqueue`, `job create`, `POST /v1/jobs`.
pub async fn register(store: &Store, job: Uuid) -> Result<(), StoreError> {
    register_at(store, job, crate::message::now_ms()).await
}

/// [`register`] with a given creation time (tests and benchmarks).
pub async fn register_at(store: &Store, job: Uuid, created_ms: u64) -> Result<(), StoreError> {
    let mut call = ScriptCall::new(&REGISTER);
    call.key(store.names().jobs_index_key())
        .arg(job.to_string())
        .arg(created_ms)
        .arg(store.ttl().as_millis() as u64);
    store.eval::<i64>(&call).await.map(|_| ())
}

/// The page of at most `limit` jobs (capped at [`MAX_PAGE`]) from `offset`, newest first.
/// Jobs whose keys have expired are dropped from the index and not shown.
pub async fn page(store: &Store, offset: u64, limit: usize) -> Result<JobsPage, StoreError> {
    let limit = limit.clamp(1, MAX_PAGE) as isize;
    let key = store.names().jobs_index_key();
    let mut conn = store.connection();
    let count: u64 = conn.zcard(&key).await?;
    let start = offset.min(isize::MAX as u64) as isize;
    let ids: Vec<(String, f64)> = conn
        .zrevrange_withscores(&key, start, start + limit - 1)
        .await?;
    let statuses = join_all(ids.iter().map(|(id, _)| async move {
        match Uuid::parse_str(id) {
            Ok(job) => store.status(job).await,
            Err(_) => Ok(None),
        }
    }))
    .await;
    let mut jobs = Vec::with_capacity(ids.len());
    let mut gone = Vec::new();
    for ((id, created), status) in ids.into_iter().zip(statuses) {
        match status? {
            Some(status) => jobs.push(JobEntry {
                created_ms: created.max(0.0) as u64,
                status,
            }),
            None => gone.push(id),
        }
    }
    if !gone.is_empty() {
        let _: i64 = conn.zrem(&key, &gone).await?;
    }
    Ok(JobsPage {
        jobs,
        count: count.saturating_sub(gone.len() as u64),
        offset,
    })
}

/// When `job` was registered (ms), or `None` when the index does not hold it.
pub async fn created_ms(store: &Store, job: Uuid) -> Result<Option<u64>, StoreError> {
    let mut conn = store.connection();
    let score: Option<f64> = conn
        .zscore(store.names().jobs_index_key(), job.to_string())
        .await?;
    Ok(score.map(|s| s.max(0.0) as u64))
}
