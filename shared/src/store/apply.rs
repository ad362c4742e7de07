//! The aggregator's write: a batch of task results applied to the job's groups, counters
//! and latency histogram, exactly once per task id.
//!
//! Two scripts do it. `apply_fresh.lua` is the fast path: the batch's records merged per
//! group and its latencies bucketed here, so Redis reads a few numbers per group instead of
//! five per task; it writes nothing if any task was applied before. Then `apply.lua`, the
//! per-task form, applies only the tasks that are new (a redelivery, or a task whose
//! result arrived twice).

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::conn::ScriptCall;
use super::{Store, StoreError};
use crate::message::TaskResult;
use crate::stats::GroupStats;

impl Store {
    /// Applies results of one job, exactly once per task id; returns how many tasks were
    /// applied now (a redelivered batch applies none).
    pub async fn apply(&self, job: Uuid, items: &[&TaskResult]) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let now = crate::message::now_ms();
        let fresh: i64 = self.write(&self.fresh_call(job, items, now)).await?;
        match u64::try_from(fresh) {
            Ok(applied) => Ok(applied),
            Err(_) => self.write(&self.per_task_call(job, items, now)).await,
        }
    }

    fn apply_keys(&self, call: &mut ScriptCall<'_>, job: Uuid) {
        call.key(self.names.status_key(job))
            .key(self.names.tasks_key(job))
            .key(self.names.groups_key(job))
            .key(self.names.latency_key(job))
            .arg(self.ttl_secs);
    }

    /// `apply_fresh.lua`: the distinct task ids, then the batch merged per group and its
    /// latency histogram.
    fn fresh_call(&self, job: Uuid, items: &[&TaskResult], now: u64) -> ScriptCall<'_> {
        let distinct = first_of_each_task(items);
        let mut groups: HashMap<&str, GroupStats> = HashMap::new();
        let mut latency: BTreeMap<i64, u64> = BTreeMap::new();
        for item in &distinct {
            for record in &item.records {
                groups
                    .entry(record.group.as_str())
                    .or_insert_with(GroupStats::empty)
                    .add_record(record);
            }
            if let Some(enqueued) = item.enqueued_ms {
                *latency.entry(latency_bucket(now, enqueued)).or_default() += 1;
            }
        }
        let mut call = ScriptCall::new(&self.scripts.apply_fresh);
        self.apply_keys(&mut call, job);
        call.arg(distinct.len());
        for item in &distinct {
            call.arg(item.task_id.to_string());
        }
        call.arg(groups.len());
        for (group, g) in groups {
            group_args(&mut call, group, &g);
        }
        call.arg(latency.len());
        for (bucket, count) in latency {
            call.arg(bucket).arg(count);
        }
        call
    }

    /// `apply.lua`: every task with its own records, for Redis to pick the new ones.
    fn per_task_call(&self, job: Uuid, items: &[&TaskResult], now: u64) -> ScriptCall<'_> {
        let mut call = ScriptCall::new(&self.scripts.apply);
        self.apply_keys(&mut call, job);
        call.arg(now);
        for item in items {
            let groups = merge_by_group(item);
            call.arg(item.task_id.to_string())
                .arg(item.enqueued_ms.map(|m| m.to_string()).unwrap_or_default())
                .arg(groups.len());
            for (group, g) in groups {
                group_args(&mut call, group, &g);
            }
        }
        call
    }
}

/// A group's arguments: name, records, count, sum, min, max.
fn group_args(call: &mut ScriptCall<'_>, group: &str, g: &GroupStats) {
    call.arg(group)
        .arg(g.records)
        .arg(g.count)
        .arg(g.sum.to_string())
        .arg(g.min.to_string())
        .arg(g.max.to_string());
}

/// The first result of each task id, in order (a task's later results are the same
/// document again, and count once).
fn first_of_each_task<'a>(items: &[&'a TaskResult]) -> Vec<&'a TaskResult> {
    let mut seen = HashSet::with_capacity(items.len());
    items
        .iter()
        .copied()
        .filter(|item| seen.insert(item.task_id))
        .collect()
}

/// The latency histogram's bucket of a task enqueued at `enqueued` and applied at `now`
/// (ms): 4 per doubling, the same arithmetic as `apply.lua`.
pub(crate) fn latency_bucket(now: u64, enqueued: u64) -> i64 {
    let ms = now.saturating_sub(enqueued) as f64;
    ((ms + 1.0).ln() / 2f64.ln() * 4.0).floor() as i64
}

/// A task's records merged per group (a task may emit many records of one group).
pub(super) fn merge_by_group(item: &TaskResult) -> BTreeMap<&str, GroupStats> {
    let mut groups: BTreeMap<&str, GroupStats> = BTreeMap::new();
    for record in &item.records {
        groups
            .entry(record.group.as_str())
            .or_insert_with(GroupStats::empty)
            .add_record(record);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_four_per_doubling() {
        assert_eq!(latency_bucket(1_000, 1_000), 0);
        assert_eq!(latency_bucket(1_000, 999), 4);
        assert_eq!(latency_bucket(1_000, 997), 8);
        // A clock behind the enqueue time counts as 0 ms, as in apply.lua.
        assert_eq!(latency_bucket(1_000, 2_000), 0);
    }
}
